//! Dense ops on the device: the f32 GEMM (tiled in workgroup memory, split-K
//! for products with few output tiles, a matvec path for decode), reductions,
//! RMSNorm, the feed-forward gate, embedding gather / scatter-add, the fused
//! cross-entropy and the AdamW step.
//!
//! Every tensor that can exceed one storage binding is processed in windows
//! (`Ctx::view`): element-wise ops over flat ranges, row ops over blocks of
//! whole rows (and segment by segment when a single row exceeds a binding),
//! the GEMM over blocks of rows of A / C, rows of B and ranges of k.
//! Reductions run in a fixed order (trees in workgroup memory, then levels of
//! partial sums), so every op is deterministic; none uses float atomics.

use super::basic::preprocess;
use super::f;
use crate::ctx::WG;
use crate::{WBuf, WIds, Wgpu};
use tern_backend::{Activation, AdamW, Gemm};

const GEMM_SRC: &str = include_str!("../shaders/dense_gemm.wgsl");
const GEMV_SRC: &str = include_str!("../shaders/dense_gemv.wgsl");
const SUMK_SRC: &str = include_str!("../shaders/dense_sumk.wgsl");
const REDUCE_SRC: &str = include_str!("../shaders/dense_reduce.wgsl");
const ELEM_SRC: &str = include_str!("../shaders/dense_elem.wgsl");
const NORM_SRC: &str = include_str!("../shaders/dense_norm.wgsl");
const COLSUM_SRC: &str = include_str!("../shaders/dense_colsum.wgsl");
const EMBED_SRC: &str = include_str!("../shaders/dense_embed.wgsl");
const LOSS_SRC: &str = include_str!("../shaders/dense_loss.wgsl");
const LOSS_SEG_SRC: &str = include_str!("../shaders/dense_loss_seg.wgsl");

/// A cached scratch buffer (out of device memory: reported by the next
/// download, see `Ctx::scratch_or_defer`).
fn scratch(b: &Wgpu, key: &str, elems: usize) -> wgpu::Buffer {
    b.ctx.scratch_or_defer(key, (elems.max(1) * 4) as u64)
}

/// Ranges `(start, len)` covering `0..n` in steps of `step`.
fn ranges(n: usize, step: usize) -> impl Iterator<Item = (usize, usize)> {
    let step = step.max(1);
    (0..n).step_by(step).map(move |s| (s, step.min(n - s)))
}

/// Whole rows of `cols` columns (row stride `ld`) that fit one window.
fn rows_per_window(w: usize, ld: usize, cols: usize) -> usize {
    debug_assert!(cols <= w && cols <= ld);
    (w - cols) / ld + 1
}

// ---------------------------------------------------------------------------
// GEMM

/// Tile configurations of the tiled kernel.
#[derive(Clone, Copy)]
struct Tile {
    bm: usize,
    bn: usize,
    bk: usize,
    tm: usize,
    tn: usize,
}

const TILE_SMALL: Tile = Tile {
    bm: 64,
    bn: 64,
    bk: 16,
    tm: 4,
    tn: 4,
};
const TILE_TALL: Tile = Tile {
    bm: 128,
    bn: 64,
    bk: 8,
    tm: 8,
    tn: 4,
};
const TILE_LARGE: Tile = Tile {
    bm: 128,
    bn: 128,
    bk: 8,
    tm: 8,
    tn: 8,
};

/// Up to this many rows of C with B stored `[n, k]`, the product runs as
/// dot products over the rows of B (decode's LM head and projections).
const GEMV_MAX: usize = 8;

/// Largest block of rows or columns of C in one dispatch.
const MAX_BLOCK: usize = 65535 * 64;

/// Aim for at least this many workgroups before splitting k.
const SPLIT_TARGET: usize = 256;
/// Smallest k range per split.
const SPLIT_MIN_K: usize = 128;

/// Largest value `<= max` (and `<= cur`) for a block dimension: a multiple of
/// 64 when at least 64.
fn fit(cur: usize, max: usize) -> usize {
    if max >= cur {
        cur
    } else if max >= 64 {
        max / 64 * 64
    } else {
        max.max(1)
    }
}

/// Shrink an operand block of `outer` rows of `inner` contiguous elements
/// (row stride `stride`) until it spans at most `w` elements: fewer rows
/// while one row fits, else a single row of fewer elements.
fn shrink(outer: &mut usize, inner: &mut usize, stride: usize, w: usize) {
    if *inner <= w {
        *outer = fit(*outer, (w - *inner) / stride + 1);
    } else {
        *outer = 1;
        *inner = fit(*inner, w);
    }
}

/// Block sizes `(mb, nb, kb)` such that every operand block of the product
/// fits one binding of `w` elements.
fn gemm_blocks(g: &Gemm, w: usize) -> (usize, usize, usize) {
    let (m, n, k) = (g.m, g.n, g.k);
    // At most 65535 tiles of 64 along each grid dimension.
    let (mut mb, mut nb, mut kb) = (m.min(MAX_BLOCK), n.min(MAX_BLOCK), k);
    loop {
        let sc = (mb - 1) * n + nb;
        let sa = if g.trans_a {
            (kb - 1) * m + mb
        } else {
            (mb - 1) * k + kb
        };
        let sb = if g.trans_b {
            (nb - 1) * k + kb
        } else {
            (kb - 1) * n + nb
        };
        if sc > w {
            shrink(&mut mb, &mut nb, n, w);
        } else if sa > w {
            if g.trans_a {
                shrink(&mut kb, &mut mb, m, w);
            } else {
                shrink(&mut mb, &mut kb, k, w);
            }
        } else if sb > w {
            if g.trans_b {
                shrink(&mut nb, &mut kb, k, w);
            } else {
                shrink(&mut kb, &mut nb, n, w);
            }
        } else {
            return (mb, nb, kb);
        }
    }
}

/// The tiled kernel for `tile`, with its register block written out as
/// named variables (`c{row}_{column group}` vec4 accumulators, `ra*` / `rb*`
/// staged loads): no private arrays, which a driver may leave in memory.
fn gemm_source(t: Tile, defs: &[&str]) -> String {
    use std::fmt::Write;
    let nt = (t.bm / t.tm) * (t.bn / t.tn);
    let (la, lb) = (t.bm * t.bk / nt, t.bk * t.bn / nt);
    let (gm, gn) = (t.tm / 4, t.tn / 4);
    let (mut decl, mut first, mut next, mut put, mut fma, mut write) = (
        String::new(),
        String::new(),
        String::new(),
        String::new(),
        String::new(),
        String::new(),
    );
    for r in 0..t.tm {
        for h in 0..gn {
            let _ = writeln!(decl, "    var c{r}_{h} = vec4<f32>(0.0);");
        }
    }
    for (name, n, load, store, origin) in [
        ("ra", la, "load_a", "put_a", "i0"),
        ("rb", lb, "load_b", "put_b", "j0"),
    ] {
        for q in 0..n {
            let e = q * nt;
            let _ = writeln!(decl, "    var {name}{q} = 0.0;");
            let _ = writeln!(
                first,
                "    {name}{q} = {load}(t + {e}u, {origin}, kbeg, kend);"
            );
            let _ = writeln!(
                next,
                "            {name}{q} = {load}(t + {e}u, {origin}, pn, kend);"
            );
            let _ = writeln!(put, "        {store}(t + {e}u, {name}{q});");
        }
    }
    for g in 0..gm {
        let _ = writeln!(
            fma,
            "            let a{g} = tile_a[kk * PA + ty + {g}u * TY];"
        );
    }
    for h in 0..gn {
        let _ = writeln!(
            fma,
            "            let b{h} = tile_b[kk * PB + tx + {h}u * TX];"
        );
    }
    for g in 0..gm {
        for (rr, comp) in ["x", "y", "z", "w"].iter().enumerate() {
            let r = g * 4 + rr;
            for h in 0..gn {
                let _ = writeln!(fma, "            c{r}_{h} += a{g}.{comp} * b{h};");
            }
            for h in 0..gn {
                let _ = writeln!(
                    write,
                    "    write4(i0 + (ty + {g}u * TY) * 4u + {rr}u, j0 + (tx + {h}u * TX) * 4u, wg.z, c{r}_{h});"
                );
            }
        }
    }
    preprocess(
        GEMM_SRC,
        defs,
        &[
            ("BM", t.bm.to_string()),
            ("BN", t.bn.to_string()),
            ("BK", t.bk.to_string()),
            ("TM", t.tm.to_string()),
            ("TN", t.tn.to_string()),
            ("DECL", decl),
            ("FETCH_FIRST", first),
            ("FETCH_NEXT", next),
            ("PUT", put),
            ("FMA", fma),
            ("WRITE", write),
        ],
    )
}

/// The matvec kernel for `mr` rows of C, accumulators as named variables;
/// `v4`: A (not transposed) and B read as vec4 (rows 16-byte aligned).
fn gemv_source(mr: usize, ta: &str, v4: bool, ct: bool) -> String {
    use std::fmt::Write;
    let (mut decl, mut acc4, mut acc1, mut store) =
        (String::new(), String::new(), String::new(), String::new());
    for i in 0..mr {
        let _ = writeln!(decl, "    var acc{i} = 0.0;");
        if v4 {
            let ai = format!("(p.sa + {i}u * p.lda) / 4u");
            let _ = writeln!(
                acc4,
                "            acc{i} += (dot(a[{ai} + q], b0) + dot(a[{ai} + q + 32u], b1)) + (dot(a[{ai} + q + 64u], b2) + dot(a[{ai} + q + 96u], b3));"
            );
            let _ = writeln!(acc1, "            acc{i} += dot(a[{ai} + q], b0);");
        } else {
            let _ = writeln!(
                acc4,
                "            acc{i} += (a_at({i}u, q) * b0 + a_at({i}u, q + 32u) * b1) + (a_at({i}u, q + 64u) * b2 + a_at({i}u, q + 96u) * b3);"
            );
            let _ = writeln!(acc1, "            acc{i} += a_at({i}u, q) * b0;");
        }
        let _ = writeln!(store, "    red[{i}u * 256u + t] = acc{i};");
    }
    let (row, len) = if v4 {
        ("(p.sb + j * p.ldb) / 4u", "p.k / 4u")
    } else {
        ("p.sb + j * p.ldb", "p.k")
    };
    let lp = format!(
        "        let row = {row};\n        let len = {len};\n        var q = lane;\n        while (q + 96u < len) {{\n            let b0 = b[row + q];\n            let b1 = b[row + q + 32u];\n            let b2 = b[row + q + 64u];\n            let b3 = b[row + q + 96u];\n{acc4}            q += 128u;\n        }}\n        while (q < len) {{\n            let b0 = b[row + q];\n{acc1}            q += 32u;\n        }}\n"
    );
    let mut defs = vec![if v4 { "V4" } else { ta }];
    if ct {
        defs.push("CT");
    }
    preprocess(
        GEMV_SRC,
        &defs,
        &[
            ("MR", mr.to_string()),
            ("DECL", decl),
            ("LOOP", lp),
            ("STORE", store),
        ],
    )
}

pub(crate) fn matmul(b: &Wgpu, a: &WBuf, bm: &WBuf, c: &mut WBuf, g: Gemm) {
    assert_eq!(
        a.len,
        g.m * g.k,
        "wgpu matmul: a has length {}, expected {}",
        a.len,
        g.m * g.k
    );
    assert_eq!(
        bm.len,
        g.k * g.n,
        "wgpu matmul: b has length {}, expected {}",
        bm.len,
        g.k * g.n
    );
    assert_eq!(
        c.len,
        g.m * g.n,
        "wgpu matmul: c has length {}, expected {}",
        c.len,
        g.m * g.n
    );
    let (m, n, k) = (g.m, g.n, g.k);
    if m == 0 || n == 0 {
        return;
    }
    let w = b.ctx.window_elems();
    if k == 0 {
        // C = beta C (zeros when beta == 0, without reading C).
        let rows = rows_per_window(w, n, n.min(w)).min(m);
        let cols = n.min(w);
        for (i0, ib) in ranges(m, if n <= w { rows } else { 1 }) {
            for (j0, jb) in ranges(n, cols) {
                sumk(b, None, 0, 0, &c.buf, i0 * n + j0, ib, jb, n, 0.0, g.beta);
            }
        }
        return;
    }
    let (mb, nb, kb) = gemm_blocks(&g, w);
    for (i0, ib) in ranges(m, mb) {
        for (j0, jb) in ranges(n, nb) {
            for (p0, pk) in ranges(k, kb) {
                let beta = if p0 == 0 { g.beta } else { 1.0 };
                gemm_block(b, a, bm, c, &g, (i0, ib), (j0, jb), (p0, pk), beta);
            }
        }
    }
}

/// `C = alpha sum_z part[z] + beta C` over a `[mb, nb]` block of C (row
/// stride `ldc`); `splits == 0` scales C by beta.
#[allow(clippy::too_many_arguments)]
fn sumk(
    b: &Wgpu,
    part: Option<&wgpu::Buffer>,
    splits: usize,
    part_start: usize,
    c: &wgpu::Buffer,
    c_start: usize,
    mb: usize,
    nb: usize,
    ldc: usize,
    alpha: f32,
    beta: f32,
) {
    let pipe = b
        .ctx
        .pipeline("dense/gemm_sumk", || preprocess(SUMK_SRC, &[], &[]));
    let dummy;
    let (part_buf, part_len) = match part {
        Some(p) => (p, splits * mb * nb),
        None => {
            dummy = scratch(b, "dense/dummy", 1);
            (&dummy, 1)
        }
    };
    let (vp, sp) = b.ctx.view(part_buf, part_start, part_len);
    let (vc, sc) = b.ctx.view(c, c_start, (mb - 1) * ldc + nb);
    let words = [
        mb as u32,
        nb as u32,
        splits as u32,
        0,
        0,
        ldc as u32,
        sp,
        0,
        sc,
        f(alpha),
        f(beta),
        0,
        (mb * nb) as u32,
    ];
    let groups = b.ctx.grid(((mb * nb) as u32).div_ceil(WG));
    b.ctx.dispatch(&pipe, &words, &[vp, vc], groups);
}

/// One block of the product: rows `i` of op(A) / C, columns `j` of op(B) / C
/// and the k range `kr`, each `(start, len)`.
#[allow(clippy::too_many_arguments)]
fn gemm_block(
    b: &Wgpu,
    a: &WBuf,
    bm: &WBuf,
    c: &WBuf,
    g: &Gemm,
    (i0, ib): (usize, usize),
    (j0, jb): (usize, usize),
    (p0, pk): (usize, usize),
    beta: f32,
) {
    let (m, n, k) = (g.m, g.n, g.k);
    let (lda, a_start, a_span) = if g.trans_a {
        (m, p0 * m + i0, (pk - 1) * m + ib)
    } else {
        (k, i0 * k + p0, (ib - 1) * k + pk)
    };
    let (ldb, b_start, b_span) = if g.trans_b {
        (k, j0 * k + p0, (jb - 1) * k + pk)
    } else {
        (n, p0 * n + j0, (pk - 1) * n + jb)
    };
    let c_start = i0 * n + j0;
    let c_span = (ib - 1) * n + jb;
    let (va, sa) = b.ctx.view(&a.buf, a_start, a_span);
    let (vb, sb) = b.ctx.view(&bm.buf, b_start, b_span);

    // Few rows of C against B stored [n, k]: dot products over the rows of B.
    // Few columns of C with A stored [m, k]: the same kernel on Cᵀ = op(B)ᵀ Aᵀ
    // (the rows of A are the long contiguous operand).
    let direct = ib <= GEMV_MAX && g.trans_b;
    let transposed = !direct && jb <= GEMV_MAX && !g.trans_a;
    if direct || transposed {
        // (rows of the result, their operand view/shift/leading dimension and
        // layout, the streamed operand, its leading dimension, its row count)
        let (mr, (vx, sx, ldx), x_trans, (vy, sy, ldy), ny) = if direct {
            (ib, (va, sa, lda), g.trans_a, (vb, sb, ldb), jb)
        } else {
            (jb, (vb, sb, ldb), !g.trans_b, (va, sa, lda), ib)
        };
        let v4 = !x_trans
            && k % 4 == 0
            && pk % 4 == 0
            && sx % 4 == 0
            && sy % 4 == 0
            && b.ctx.align % 16 == 0;
        let lay = if x_trans { "TA" } else { "NA" };
        let key = format!(
            "dense/gemv/{mr}/{lay}{}{}",
            if v4 { "/v4" } else { "" },
            if transposed { "/ct" } else { "" }
        );
        let pipe = b
            .ctx
            .pipeline(&key, || gemv_source(mr, lay, v4, transposed));
        let (vc, sc) = b.ctx.view(&c.buf, c_start, c_span);
        let words = [
            mr as u32,
            ny as u32,
            pk as u32,
            ldx as u32,
            ldy as u32,
            n as u32,
            sx,
            sy,
            sc,
            f(g.alpha),
            f(beta),
            0,
            0,
        ];
        let groups = b.ctx.grid((ny as u32).div_ceil(8));
        b.ctx.dispatch(&pipe, &words, &[vx, vy, vc], groups);
        return;
    }

    // Measured on an H100: 128 x 128 tiles for long k, 128 x 64 (8 x 4
    // blocks) when k is short (the prologue and the C writes weigh more),
    // 64 x 64 for narrow products.
    let tile = if ib >= 128 && jb >= 128 && pk >= 512 {
        TILE_LARGE
    } else if ib >= 128 && jb >= 64 {
        TILE_TALL
    } else {
        TILE_SMALL
    };
    let tiles = ib.div_ceil(tile.bm) * jb.div_ceil(tile.bn);
    // Split k when the output has few tiles and k is long.
    let w = b.ctx.window_elems();
    let mut splits = 1;
    if tiles < SPLIT_TARGET && pk >= 2 * SPLIT_MIN_K {
        splits = SPLIT_TARGET
            .div_ceil(tiles)
            .min(pk / SPLIT_MIN_K)
            .min(64)
            .min(w / (ib * jb).max(1));
    }
    let kchunk = if splits > 1 {
        pk.div_ceil(splits).next_multiple_of(tile.bk)
    } else {
        pk
    };
    let splits = pk.div_ceil(kchunk);
    let split = splits > 1;
    let ta = if g.trans_a { "TA" } else { "NA" };
    let tb = if g.trans_b { "TB" } else { "NB" };
    let key = format!(
        "dense/gemm/{}x{}x{}/{}x{}/{ta}{tb}{}",
        tile.bm,
        tile.bn,
        tile.bk,
        tile.tm,
        tile.tn,
        if split { "S" } else { "" }
    );
    let pipe = b.ctx.pipeline(&key, || {
        let mut defs = vec![ta, tb];
        if split {
            defs.push("SPLIT");
        }
        gemm_source(tile, &defs)
    });
    let gx = jb.div_ceil(tile.bn) as u32;
    let gy = ib.div_ceil(tile.bm) as u32;
    if split {
        let part = scratch(b, "dense/gemm_part", splits * ib * jb);
        let (vp, spp) = b.ctx.view(&part, 0, splits * ib * jb);
        let words = [
            ib as u32,
            jb as u32,
            pk as u32,
            lda as u32,
            ldb as u32,
            jb as u32,
            sa,
            sb,
            spp,
            f(1.0),
            f(0.0),
            kchunk as u32,
            (ib * jb) as u32,
        ];
        b.ctx
            .dispatch(&pipe, &words, &[va, vb, vp], [gx, gy, splits as u32]);
        sumk(
            b,
            Some(&part),
            splits,
            0,
            &c.buf,
            c_start,
            ib,
            jb,
            n,
            g.alpha,
            beta,
        );
    } else {
        let (vc, sc) = b.ctx.view(&c.buf, c_start, c_span);
        let words = [
            ib as u32,
            jb as u32,
            pk as u32,
            lda as u32,
            ldb as u32,
            n as u32,
            sa,
            sb,
            sc,
            f(g.alpha),
            f(beta),
            pk as u32,
            0,
        ];
        b.ctx.dispatch(&pipe, &words, &[va, vb, vc], [gx, gy, 1]);
    }
}

// ---------------------------------------------------------------------------
// reductions

/// Elements per workgroup of a reduction level.
const RED_PER: usize = 16384;
/// Up to this many elements, one workgroup sums everything (one dispatch).
const RED_ONE: usize = 65536;

pub(crate) fn sum_squares(b: &Wgpu, x: &WBuf, out: &mut WBuf, index: usize) {
    assert!(
        index < out.len,
        "wgpu sum_squares: index {index} of {}",
        out.len
    );
    let w = b.ctx.window_elems();
    let mut src = x.buf.clone();
    let mut len = x.len;
    let mut level = 0;
    loop {
        // One workgroup per `per` elements; windows hold whole groups.
        let (win, per) = if len <= RED_ONE.min(w) {
            (len.max(1), len.max(1))
        } else if w >= RED_PER {
            (w / RED_PER * RED_PER, RED_PER)
        } else {
            (w, w)
        };
        let parts = (len / win) * (win / per) + (len % win).div_ceil(per);
        let parts = parts.max(1);
        let last = parts == 1;
        let dst = if last {
            out.buf.clone()
        } else {
            scratch(
                b,
                if level % 2 == 0 {
                    "dense/sum_a"
                } else {
                    "dense/sum_b"
                },
                parts,
            )
        };
        let pipe = if level == 0 {
            b.ctx.pipeline("dense/reduce_sq", || {
                preprocess(REDUCE_SRC, &["SQUARE"], &[])
            })
        } else {
            b.ctx
                .pipeline("dense/reduce", || preprocess(REDUCE_SRC, &["PLAIN"], &[]))
        };
        let mut start = 0;
        let mut pofs = if last { index } else { 0 };
        loop {
            let nw = win.min(len - start);
            let ng = nw.div_ceil(per).max(1);
            let (vx, sx) = b.ctx.view(&src, start, nw);
            let (vd, sd) = b.ctx.view(&dst, pofs, ng);
            b.ctx.dispatch(
                &pipe,
                &[nw as u32, sx, sd, per as u32, ng as u32, 0, 0],
                &[vx, vd],
                b.ctx.grid(ng as u32),
            );
            pofs += ng;
            start += nw;
            if start >= len {
                break;
            }
        }
        if last {
            return;
        }
        src = dst;
        len = parts;
        level += 1;
    }
}

// ---------------------------------------------------------------------------
// element-wise

/// One element-wise kernel over `n` elements of each buffer in `bufs`
/// (windows of the same range), with the op's parameter words `extra`
/// (from `w0` on, see dense_elem.wgsl).
fn elementwise(
    b: &Wgpu,
    key: &str,
    defs: &[&str],
    n: usize,
    bufs: &[&wgpu::Buffer],
    extra: &[u32],
) {
    let pipe = b.ctx.pipeline(key, || preprocess(ELEM_SRC, defs, &[]));
    for (start, len) in ranges(n, b.ctx.window_elems()) {
        let mut words = vec![len as u32, start as u32];
        let mut views = Vec::with_capacity(bufs.len());
        for buf in bufs {
            let (v, s) = b.ctx.view(buf, start, len);
            views.push(v);
            words.push(s);
        }
        words.resize(7, 0);
        words.extend_from_slice(extra);
        let groups = b.ctx.grid((len as u32).div_ceil(WG));
        b.ctx.dispatch(&pipe, &words, &views, groups);
    }
}

pub(crate) fn dropout(b: &Wgpu, x: &WBuf, y: &mut WBuf, p: f32, seed: u64) {
    assert_eq!(x.len, y.len, "wgpu dropout: lengths");
    assert!((0.0..1.0).contains(&p), "wgpu dropout: p = {p}");
    let scale = 1.0 / (1.0 - p);
    let threshold = ((p as f64) * 4_294_967_296.0).min(u32::MAX as f64) as u32;
    elementwise(
        b,
        "dense/dropout",
        &["DROPOUT"],
        x.len,
        &[&x.buf, &y.buf],
        &[
            seed as u32,
            (seed >> 32) as u32,
            threshold,
            f(scale),
            0,
            0,
            0,
            0,
            0,
            0,
            f(1.0),
        ],
    );
}

pub(crate) fn gate(b: &Wgpu, g: &WBuf, u: &WBuf, y: &mut WBuf, act: Activation) {
    assert_eq!(u.len, g.len, "wgpu gate: u length");
    assert_eq!(y.len, g.len, "wgpu gate: y length");
    let (key, def) = match act {
        Activation::Relu2 => ("dense/gate_relu2", "GATE_RELU2"),
        Activation::Silu => ("dense/gate_silu", "GATE_SILU"),
    };
    elementwise(
        b,
        key,
        &["GATE", def],
        g.len,
        &[&g.buf, &u.buf, &y.buf],
        &[0; 11],
    );
}

pub(crate) fn gate_backward(
    b: &Wgpu,
    g: &WBuf,
    u: &WBuf,
    dy: &WBuf,
    dg: &mut WBuf,
    du: &mut WBuf,
    act: Activation,
) {
    let n = g.len;
    assert_eq!(u.len, n, "wgpu gate_backward: u length");
    assert_eq!(dy.len, n, "wgpu gate_backward: dy length");
    assert_eq!(dg.len, n, "wgpu gate_backward: dg length");
    assert_eq!(du.len, n, "wgpu gate_backward: du length");
    let (key, def) = match act {
        Activation::Relu2 => ("dense/gate_bwd_relu2", "GBWD_RELU2"),
        Activation::Silu => ("dense/gate_bwd_silu", "GBWD_SILU"),
    };
    let mut extra = [0u32; 11];
    extra[10] = f(1.0);
    elementwise(
        b,
        key,
        &["GATE_BWD", def],
        n,
        &[&g.buf, &u.buf, &dy.buf, &dg.buf, &du.buf],
        &extra,
    );
}

pub(crate) fn adamw(b: &Wgpu, p: &mut WBuf, g: &WBuf, m: &mut WBuf, v: &mut WBuf, h: AdamW) {
    let n = p.len;
    assert_eq!(g.len, n, "wgpu adamw: g length");
    assert_eq!(m.len, n, "wgpu adamw: m length");
    assert_eq!(v.len, n, "wgpu adamw: v length");
    assert!(h.step >= 1, "wgpu adamw: step counts from 1");
    // The CPU's constants, computed the same way (f64 bias corrections).
    let t = h.step as i32;
    let bc1 = 1.0 - (h.beta1 as f64).powi(t);
    let bc2 = 1.0 - (h.beta2 as f64).powi(t);
    let step_size = (h.lr as f64 / bc1) as f32;
    let bc2_sqrt = bc2.sqrt() as f32;
    let decay = (1.0 - h.lr as f64 * h.weight_decay as f64) as f32;
    elementwise(
        b,
        "dense/adamw",
        &["ADAMW"],
        n,
        &[&p.buf, &g.buf, &m.buf, &v.buf],
        &[
            0,
            0,
            0,
            f(decay),
            f(1.0 - h.beta1),
            f(h.beta2),
            f(1.0 - h.beta2),
            f(bc2_sqrt),
            f(h.eps),
            f(step_size),
            f(1.0),
        ],
    );
}

// ---------------------------------------------------------------------------
// RMSNorm

/// Rows per block of the first pass of RMSNorm's dw (column sums).
const DW_ROWS: usize = 32;

/// Segments of a row of `dim` elements longer than a window.
fn segments(dim: usize, w: usize) -> (usize, usize) {
    let nseg = dim.div_ceil(w);
    (nseg, dim.div_ceil(nseg))
}

/// Partial sums (dense_reduce.wgsl, one workgroup) of one segment into
/// `part[slot]`.
fn reduce_segment(
    b: &Wgpu,
    def: &str,
    srcs: &[(&wgpu::Buffer, usize)],
    len: usize,
    part: &wgpu::Buffer,
    slot: usize,
) {
    let key = format!("dense/reduce_{def}");
    let pipe = b.ctx.pipeline(&key, || preprocess(REDUCE_SRC, &[def], &[]));
    let mut views = Vec::new();
    let mut shifts = Vec::new();
    for &(buf, start) in srcs {
        let (v, s) = b.ctx.view(buf, start, len);
        views.push(v);
        shifts.push(s);
    }
    let (vd, sd) = b.ctx.view(part, slot, 1);
    views.push(vd);
    shifts.resize(3, 0);
    b.ctx.dispatch(
        &pipe,
        &[
            len as u32,
            shifts[0],
            sd,
            len.max(1) as u32,
            1,
            shifts[1],
            shifts[2],
        ],
        &views,
        [1, 1, 1],
    );
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn rmsnorm(
    b: &Wgpu,
    x: &WBuf,
    w: &WBuf,
    y: &mut WBuf,
    rstd: &mut WBuf,
    rows: usize,
    dim: usize,
    eps: f32,
) {
    assert_eq!(x.len, rows * dim, "wgpu rmsnorm: x length");
    assert_eq!(w.len, dim, "wgpu rmsnorm: w length");
    assert_eq!(y.len, rows * dim, "wgpu rmsnorm: y length");
    assert_eq!(rstd.len, rows, "wgpu rmsnorm: rstd length");
    if dim == 0 || rows == 0 {
        return;
    }
    let wn = b.ctx.window_elems();
    if dim <= wn {
        let pipe = b
            .ctx
            .pipeline("dense/rms", || preprocess(NORM_SRC, &["RMS"], &[]));
        let (vw, sw) = b.ctx.view(&w.buf, 0, dim);
        for (r0, rn) in ranges(rows, (wn / dim).min(wn)) {
            let (vx, sx) = b.ctx.view(&x.buf, r0 * dim, rn * dim);
            let (vy, sy) = b.ctx.view(&y.buf, r0 * dim, rn * dim);
            let (vr, sr) = b.ctx.view(&rstd.buf, r0, rn);
            let words = [rn as u32, dim as u32, sx, sw, sy, sr, 0, 0, 0, 0, 0, f(eps)];
            b.ctx
                .dispatch(&pipe, &words, &[vx, vw, vy, vr], b.ctx.grid(rn as u32));
        }
        return;
    }
    // A row exceeds one binding: segment by segment.
    let (nseg, seg) = segments(dim, wn);
    let part = scratch(b, "dense/rms_part", rows * nseg);
    let fin = b
        .ctx
        .pipeline("dense/rms_fin", || preprocess(NORM_SRC, &["RMS_FIN"], &[]));
    let apply = b.ctx.pipeline("dense/rms_apply", || {
        preprocess(NORM_SRC, &["RMS_APPLY"], &[])
    });
    for r in 0..rows {
        for (s, (c0, cn)) in ranges(dim, seg).enumerate() {
            reduce_segment(
                b,
                "SQUARE",
                &[(&x.buf, r * dim + c0)],
                cn,
                &part,
                r * nseg + s,
            );
        }
        let (vp, sp) = b.ctx.view(&part, r * nseg, nseg);
        let (vr, sr) = b.ctx.view(&rstd.buf, r, 1);
        let words = [1, dim as u32, 0, 0, 0, sr, 0, 0, sp, nseg as u32, 0, f(eps)];
        b.ctx.dispatch(&fin, &words, &[vp, vr], [1, 1, 1]);
        for (c0, cn) in ranges(dim, seg) {
            let (vx, sx) = b.ctx.view(&x.buf, r * dim + c0, cn);
            let (vw, sw) = b.ctx.view(&w.buf, c0, cn);
            let (vr, sr) = b.ctx.view(&rstd.buf, r, 1);
            let (vy, sy) = b.ctx.view(&y.buf, r * dim + c0, cn);
            let words = [1, dim as u32, sx, sw, sy, sr, 0, 0, 0, 0, cn as u32, f(eps)];
            let groups = b.ctx.grid((cn as u32).div_ceil(WG));
            b.ctx.dispatch(&apply, &words, &[vx, vw, vr, vy], groups);
        }
    }
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn rmsnorm_backward(
    b: &Wgpu,
    x: &WBuf,
    w: &WBuf,
    rstd: &WBuf,
    dy: &WBuf,
    dx: &mut WBuf,
    dw: Option<&mut WBuf>,
    rows: usize,
    dim: usize,
) {
    assert_eq!(x.len, rows * dim, "wgpu rmsnorm_backward: x length");
    assert_eq!(w.len, dim, "wgpu rmsnorm_backward: w length");
    assert_eq!(rstd.len, rows, "wgpu rmsnorm_backward: rstd length");
    assert_eq!(dy.len, rows * dim, "wgpu rmsnorm_backward: dy length");
    assert_eq!(dx.len, rows * dim, "wgpu rmsnorm_backward: dx length");
    if dim == 0 {
        return;
    }
    if let Some(dw) = &dw {
        assert_eq!(dw.len, dim, "wgpu rmsnorm_backward: dw length");
    }
    if rows == 0 {
        return;
    }
    let wn = b.ctx.window_elems();
    if dim <= wn {
        let pipe = b
            .ctx
            .pipeline("dense/rmsb", || preprocess(NORM_SRC, &["RMSB"], &[]));
        let (vw, sw) = b.ctx.view(&w.buf, 0, dim);
        for (r0, rn) in ranges(rows, (wn / dim).min(wn)) {
            let (vx, sx) = b.ctx.view(&x.buf, r0 * dim, rn * dim);
            let (vr, sr) = b.ctx.view(&rstd.buf, r0, rn);
            let (vdy, sdy) = b.ctx.view(&dy.buf, r0 * dim, rn * dim);
            let (vdx, sdx) = b.ctx.view(&dx.buf, r0 * dim, rn * dim);
            let words = [rn as u32, dim as u32, sx, sw, 0, sr, sdy, sdx, 0, 0, 0, 0];
            b.ctx.dispatch(
                &pipe,
                &words,
                &[vx, vw, vr, vdy, vdx],
                b.ctx.grid(rn as u32),
            );
        }
    } else {
        let (nseg, seg) = segments(dim, wn);
        let part = scratch(b, "dense/rms_part", rows * nseg);
        let fin = b.ctx.pipeline("dense/rmsb_fin", || {
            preprocess(NORM_SRC, &["RMSB_FIN"], &[])
        });
        let apply = b.ctx.pipeline("dense/rmsb_apply", || {
            preprocess(NORM_SRC, &["RMSB_APPLY"], &[])
        });
        for r in 0..rows {
            for (s, (c0, cn)) in ranges(dim, seg).enumerate() {
                let o = r * dim + c0;
                reduce_segment(
                    b,
                    "DOT3",
                    &[(&x.buf, o), (&dy.buf, o), (&w.buf, c0)],
                    cn,
                    &part,
                    r * nseg + s,
                );
            }
            let (vr, sr) = b.ctx.view(&rstd.buf, r, 1);
            let (vp, sp) = b.ctx.view(&part, r * nseg, nseg);
            let words = [1, dim as u32, 0, 0, 0, sr, 0, 0, sp, nseg as u32, 0, 0];
            b.ctx.dispatch(&fin, &words, &[vr, vp], [1, 1, 1]);
            for (c0, cn) in ranges(dim, seg) {
                let o = r * dim + c0;
                let (vx, sx) = b.ctx.view(&x.buf, o, cn);
                let (vw, sw) = b.ctx.view(&w.buf, c0, cn);
                let (vr, sr) = b.ctx.view(&rstd.buf, r, 1);
                let (vdy, sdy) = b.ctx.view(&dy.buf, o, cn);
                let (vp, sp) = b.ctx.view(&part, r * nseg, 1);
                let (vdx, sdx) = b.ctx.view(&dx.buf, o, cn);
                let words = [1, dim as u32, sx, sw, 0, sr, sdy, sdx, sp, 0, cn as u32, 0];
                let groups = b.ctx.grid((cn as u32).div_ceil(WG));
                b.ctx
                    .dispatch(&apply, &words, &[vx, vw, vr, vdy, vp, vdx], groups);
            }
        }
    }
    if let Some(dw) = dw {
        rms_dw(b, x, rstd, dy, dw, rows, dim);
    }
}

/// `dw[c] += sum_r dy[r, c] x[r, c] rstd[r]`: column sums over blocks of
/// rows (in row order within a block, blocks in order), no atomics.
fn rms_dw(b: &Wgpu, x: &WBuf, rstd: &WBuf, dy: &WBuf, dw: &mut WBuf, rows: usize, dim: usize) {
    let wn = b.ctx.window_elems();
    let prod = b.ctx.pipeline("dense/colsum_prod", || {
        preprocess(COLSUM_SRC, &["PROD"], &[])
    });
    // One pass of PROD over `rn` rows from r0 (block `rb`), columns c0..c0+cn,
    // into d (row stride ldd per block).
    let pass = |r0: usize,
                rn: usize,
                rb: usize,
                c0: usize,
                cn: usize,
                d: &wgpu::Buffer,
                d0: usize,
                ldd: usize,
                acc: bool| {
        let nblk = rn.div_ceil(rb);
        let span = (rn - 1) * dim + cn;
        let (vx, sx) = b.ctx.view(&x.buf, r0 * dim + c0, span);
        let (vy, sy) = b.ctx.view(&dy.buf, r0 * dim + c0, span);
        let (vr, sr) = b.ctx.view(&rstd.buf, r0, rn);
        let (vd, sd) = b.ctx.view(d, d0, (nblk - 1) * ldd + cn);
        let groups = (nblk * cn.div_ceil(256)) as u32;
        let words = [
            rn as u32, cn as u32, dim as u32, rb as u32, sx, sy, sr, sd, ldd as u32, acc as u32,
            groups,
        ];
        b.ctx
            .dispatch(&prod, &words, &[vx, vy, vr, vd], b.ctx.grid(groups));
    };
    if dim <= wn {
        let wrows = wn / dim; // rows of x per window
        if rows <= DW_ROWS.min(wrows) {
            pass(0, rows, rows, 0, dim, &dw.buf, 0, 0, true);
            return;
        }
        // Two passes: partial sums per block of rows, then their sum.
        let rb = DW_ROWS.max(rows.div_ceil(wrows));
        let nblk = rows.div_ceil(rb);
        if rb <= wrows && nblk * dim <= wn {
            let part = scratch(b, "dense/rms_dw_part", nblk * dim);
            let step = wrows / rb * rb;
            for (r0, rn) in ranges(rows, step) {
                pass(r0, rn, rb, 0, dim, &part, (r0 / rb) * dim, dim, false);
            }
            let plain = b.ctx.pipeline("dense/colsum_plain", || {
                preprocess(COLSUM_SRC, &["PLAIN"], &[])
            });
            let (vp, sp) = b.ctx.view(&part, 0, nblk * dim);
            let (vd, sd) = b.ctx.view(&dw.buf, 0, dim);
            let groups = dim.div_ceil(256) as u32;
            let words = [
                nblk as u32,
                dim as u32,
                dim as u32,
                nblk as u32,
                sp,
                0,
                0,
                sd,
                0,
                1,
                groups,
            ];
            b.ctx
                .dispatch(&plain, &words, &[vp, vd], b.ctx.grid(groups));
            return;
        }
    }
    // Rows one at a time onto dw (the CPU's order), by column segments.
    let cb = dim.min(wn);
    for r in 0..rows {
        for (c0, cn) in ranges(dim, cb) {
            pass(r, 1, 1, c0, cn, &dw.buf, c0, 0, true);
        }
    }
}

// ---------------------------------------------------------------------------
// embedding

pub(crate) fn embedding(b: &Wgpu, table: &WBuf, ids: &WIds, y: &mut WBuf, dim: usize) {
    assert_eq!(y.len, ids.len * dim, "wgpu embedding: y length");
    assert!(
        dim > 0 && table.len % dim == 0,
        "wgpu embedding: table length {} vs dim {dim}",
        table.len
    );
    let vocab = table.len / dim;
    let rows = ids.len;
    if rows == 0 || vocab == 0 {
        return;
    }
    let wn = b.ctx.window_elems();
    let cb = dim.min(wn);
    let rpw = rows_per_window(wn, dim, cb);
    let pipe = b.ctx.pipeline("dense/embed_gather", || {
        preprocess(EMBED_SRC, &["GATHER"], &[])
    });
    for (c0, cn) in ranges(dim, cb) {
        for (r0, rn) in ranges(rows, rpw) {
            let (vi, si) = b.ctx.view(&ids.buf, r0, rn);
            let (vy, sy) = b.ctx.view(&y.buf, r0 * dim + c0, (rn - 1) * dim + cn);
            for (v0, vn) in ranges(vocab, rpw) {
                let (vt, st) = b.ctx.view(&table.buf, v0 * dim + c0, (vn - 1) * dim + cn);
                let groups = ((rn * cn) as u32).div_ceil(WG);
                let words = [
                    rn as u32, cn as u32, dim as u32, sy, st, si, v0 as u32, vn as u32, 0, groups,
                ];
                b.ctx
                    .dispatch(&pipe, &words, &[vi, vt, vy], b.ctx.grid(groups));
            }
        }
    }
}

pub(crate) fn embedding_backward(b: &Wgpu, ids: &WIds, dy: &WBuf, dtable: &mut WBuf, dim: usize) {
    assert_eq!(dy.len, ids.len * dim, "wgpu embedding_backward: dy length");
    assert!(
        dim > 0 && dtable.len % dim == 0,
        "wgpu embedding_backward: dtable length {} vs dim {dim}",
        dtable.len
    );
    let vocab = dtable.len / dim;
    let rows = ids.len;
    if rows == 0 || vocab == 0 {
        return;
    }
    let wn = b.ctx.window_elems();
    let cb = dim.min(wn);
    let rpw = rows_per_window(wn, dim, cb);
    // Blocks of rows of dy; links (2 words per row) must fit a window too.
    let rblk = rpw.min(wn / 2).max(1);
    let links = b.ctx.pipeline("dense/embed_links", || {
        preprocess(EMBED_SRC, &["LINKS"], &[])
    });
    let scatter = b.ctx.pipeline("dense/embed_scatter", || {
        preprocess(EMBED_SRC, &["SCATTER"], &[])
    });
    let lk = scratch(b, "dense/embed_links", 2 * rblk.min(rows));
    for (r0, rn) in ranges(rows, rblk) {
        let (vi, si) = b.ctx.view(&ids.buf, r0, rn);
        let (vl, sl) = b.ctx.view(&lk, 0, 2 * rn);
        let groups = (rn as u32).div_ceil(32);
        let words = [rn as u32, 0, 0, 0, 0, si, 0, 0, sl, groups];
        b.ctx
            .dispatch(&links, &words, &[vi, vl], b.ctx.grid(groups));
        for (c0, cn) in ranges(dim, cb) {
            let (vy, sy) = b.ctx.view(&dy.buf, r0 * dim + c0, (rn - 1) * dim + cn);
            for (v0, vn) in ranges(vocab, rpw) {
                let (vt, st) = b.ctx.view(&dtable.buf, v0 * dim + c0, (vn - 1) * dim + cn);
                let (vi, si) = b.ctx.view(&ids.buf, r0, rn);
                let (vl, sl) = b.ctx.view(&lk, 0, 2 * rn);
                let groups = (rn * cn.div_ceil(256)) as u32;
                let words = [
                    rn as u32, cn as u32, dim as u32, sy, st, si, v0 as u32, vn as u32, sl, groups,
                ];
                b.ctx
                    .dispatch(&scatter, &words, &[vi, vl, vy, vt], b.ctx.grid(groups));
            }
        }
    }
}

// ---------------------------------------------------------------------------
// loss

#[allow(clippy::too_many_arguments)]
pub(crate) fn cross_entropy(
    b: &Wgpu,
    logits: &WBuf,
    targets: &WIds,
    loss: &mut WBuf,
    dlogits: Option<&mut WBuf>,
    rows: usize,
    vocab: usize,
    grad_scale: f32,
) {
    assert_eq!(
        logits.len,
        rows * vocab,
        "wgpu cross_entropy: logits length"
    );
    assert_eq!(targets.len, rows, "wgpu cross_entropy: targets length");
    assert_eq!(loss.len, rows, "wgpu cross_entropy: loss length");
    if let Some(dl) = &dlogits {
        assert_eq!(dl.len, rows * vocab, "wgpu cross_entropy: dlogits length");
    }
    if rows == 0 {
        return;
    }
    assert!(vocab > 0, "wgpu cross_entropy: vocab must be > 0");
    let wn = b.ctx.window_elems();
    if vocab <= wn {
        let grad = dlogits.is_some();
        let pipe = if grad {
            b.ctx
                .pipeline("dense/ce_grad", || preprocess(LOSS_SRC, &["GRAD"], &[]))
        } else {
            b.ctx
                .pipeline("dense/ce", || preprocess(LOSS_SRC, &[], &[]))
        };
        for (r0, rn) in ranges(rows, wn / vocab) {
            let (vx, sx) = b.ctx.view(&logits.buf, r0 * vocab, rn * vocab);
            let (vt, st) = b.ctx.view(&targets.buf, r0, rn);
            let (vl, sl) = b.ctx.view(&loss.buf, r0, rn);
            let mut views = vec![vx, vt, vl];
            let mut sd = 0;
            if let Some(dl) = &dlogits {
                let (vd, s) = b.ctx.view(&dl.buf, r0 * vocab, rn * vocab);
                views.push(vd);
                sd = s;
            }
            let words = [rn as u32, vocab as u32, sx, st, sl, sd, f(grad_scale)];
            b.ctx.dispatch(&pipe, &words, &views, b.ctx.grid(rn as u32));
        }
        return;
    }
    // A row exceeds one binding: per-segment statistics, then per row.
    let (nseg, seg) = segments(vocab, wn);
    let stride = 2 * nseg + 1;
    let stat = scratch(b, "dense/ce_stat", stride);
    let part = b
        .ctx
        .pipeline("dense/ce_part", || preprocess(LOSS_SEG_SRC, &["PART"], &[]));
    let fin = b
        .ctx
        .pipeline("dense/ce_fin", || preprocess(LOSS_SEG_SRC, &["FIN"], &[]));
    let gseg = b
        .ctx
        .pipeline("dense/ce_gseg", || preprocess(LOSS_SEG_SRC, &["GSEG"], &[]));
    for r in 0..rows {
        let (vt, st) = b.ctx.view(&targets.buf, r, 1);
        for (s, (c0, cn)) in ranges(vocab, seg).enumerate() {
            let (vx, sx) = b.ctx.view(&logits.buf, r * vocab + c0, cn);
            let (vs, sp) = b.ctx.view(&stat, 0, stride);
            let words = [
                cn as u32,
                c0 as u32,
                sx,
                st,
                sp,
                2 * s as u32,
                nseg as u32,
                0,
                0,
                0,
            ];
            b.ctx.dispatch(&part, &words, &[vx, vt, vs], [1, 1, 1]);
        }
        let (vs, sp) = b.ctx.view(&stat, 0, stride);
        let (vl, sl) = b.ctx.view(&loss.buf, r, 1);
        let words = [0, 0, 0, st, sp, 0, nseg as u32, sl, 0, 0];
        b.ctx.dispatch(&fin, &words, &[vt, vs, vl], [1, 1, 1]);
        if let Some(dl) = &dlogits {
            for (c0, cn) in ranges(vocab, seg) {
                let (vx, sx) = b.ctx.view(&logits.buf, r * vocab + c0, cn);
                let (vs, sp) = b.ctx.view(&stat, 0, stride);
                let (vd, sd) = b.ctx.view(&dl.buf, r * vocab + c0, cn);
                let words = [
                    cn as u32,
                    c0 as u32,
                    sx,
                    st,
                    sp,
                    0,
                    nseg as u32,
                    0,
                    sd,
                    f(grad_scale),
                ];
                let groups = b.ctx.grid((cn as u32).div_ceil(WG));
                b.ctx.dispatch(&gseg, &words, &[vx, vt, vs, vd], groups);
            }
        }
    }
}
