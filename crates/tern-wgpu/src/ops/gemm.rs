//! The f32 GEMM: `C = alpha op(A) op(B) + beta C` tiled in workgroup memory
//! (`shaders/dense_gemm.wgsl`, the register block unrolled by
//! [`gemm_source`]), split-K with a fixed-order sum for products with few
//! output tiles (`shaders/dense_sumk.wgsl`), and a matvec path for products
//! with few rows or columns (`shaders/dense_gemv.wgsl`, [`gemv_source`]).
//! Operands larger than one binding are processed in blocks of rows of A /
//! C, rows of B and ranges of k.

use bytemuck::{Pod, Zeroable};
use tern_backend::Gemm;

use super::{ranges, rows_per_window, scratch};
use crate::ctx::{View, WG};
use crate::shader::preprocess;
use crate::{WBuf, Wgpu};

pub(crate) const GEMM_SRC: &str = include_str!("../shaders/dense_gemm.wgsl");
pub(crate) const GEMV_SRC: &str = include_str!("../shaders/dense_gemv.wgsl");
pub(crate) const SUMK_SRC: &str = include_str!("../shaders/dense_sumk.wgsl");

/// `struct P` of `shaders/gemm_params.wgsl` (every dense product kernel).
#[repr(C)]
#[derive(Clone, Copy, Default, Debug, Pod, Zeroable)]
pub(crate) struct GemmParams {
    pub m: u32,
    pub n: u32,
    pub k: u32,
    pub lda: u32,
    pub ldb: u32,
    pub ldc: u32,
    pub sa: u32,
    pub sb: u32,
    pub sc: u32,
    pub alpha: f32,
    pub beta: f32,
    pub kchunk: u32,
    pub zs: u32,
}

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
pub(crate) const GEMV_MAX: usize = 8;

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

/// Block sizes `(mb, nb, kb)` such that the blocks of A and C fit one
/// binding of `w` elements and the block of B one of `wb` elements of B.
pub(crate) fn gemm_blocks(g: &Gemm, w: usize, wb: usize) -> (usize, usize, usize) {
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
        } else if sb > wb {
            if g.trans_b {
                shrink(&mut nb, &mut kb, k, wb);
            } else {
                shrink(&mut kb, &mut nb, n, wb);
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
    let half_b = defs.contains(&"HB");
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
            // B's loads: an f32 element, or an f16 one widened (HB)
            ("B_AT", if half_b { "b_at(" } else { "b[" }.into()),
            ("B_END", if half_b { ")" } else { "]" }.into()),
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
    g.check("wgpu", a.len, bm.len, c.len);
    let w = b.ctx.window_elems();
    for_blocks(b, c, &g, w, |blk, beta| {
        gemm_block(b, a, bm, c, &g, blk, beta)
    });
}

/// A block of a product: rows `i` of op(A) / C, columns `j` of op(B) / C
/// and the k range `p`, each `(start, len)`.
pub(crate) type Block = ((usize, usize), (usize, usize), (usize, usize));

/// The block loop of `C = alpha op(A) op(B) + beta C` (the f32 and the f16-B
/// products): nothing for an empty C, C scaled by beta where `k == 0`, else `block` on every block
/// whose operands fit a window (B's windows hold `b_window` elements), with
/// `g.beta` on a block's first k range and 1 on the others.
pub(crate) fn for_blocks(
    b: &Wgpu,
    c: &WBuf,
    g: &Gemm,
    b_window: usize,
    mut block: impl FnMut(Block, f32),
) {
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
    let (mb, nb, kb) = gemm_blocks(g, w, b_window);
    for i in ranges(m, mb) {
        for j in ranges(n, nb) {
            for p in ranges(k, kb) {
                block((i, j, p), if p.0 == 0 { g.beta } else { 1.0 });
            }
        }
    }
}

/// Where `blk` reads op(A) and op(B) — `(leading dimension, first element,
/// elements spanned)` each — and C's first element (row stride `g.n`).
pub(crate) fn block_ranges(
    g: &Gemm,
    ((i0, ib), (j0, jb), (p0, pk)): Block,
) -> ((usize, usize, usize), (usize, usize, usize), usize) {
    let (m, n, k) = (g.m, g.n, g.k);
    let a = if g.trans_a {
        (m, p0 * m + i0, (pk - 1) * m + ib)
    } else {
        (k, i0 * k + p0, (ib - 1) * k + pk)
    };
    let b = if g.trans_b {
        (k, j0 * k + p0, (jb - 1) * k + pk)
    } else {
        (n, p0 * n + j0, (pk - 1) * n + jb)
    };
    (a, b, i0 * n + j0)
}

/// `C = alpha sum_z part[z] + beta C` over a `[mb, nb]` block of C (row
/// stride `ldc`); `splits == 0` scales C by beta.
#[allow(clippy::too_many_arguments)]
pub(crate) fn sumk(
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
    let words = GemmParams {
        m: mb as u32,
        n: nb as u32,
        k: splits as u32,
        ldc: ldc as u32,
        sa: sp,
        sc,
        alpha,
        beta,
        zs: (mb * nb) as u32,
        ..Default::default()
    };
    let groups = b.ctx.grid(((mb * nb) as u32).div_ceil(WG));
    b.ctx.dispatch(&pipe, &words, &[vp, vc], groups);
}

/// One block of the product (see [`Block`]).
fn gemm_block(b: &Wgpu, a: &WBuf, bm: &WBuf, c: &WBuf, g: &Gemm, blk: Block, beta: f32) {
    let (n, k) = (g.n, g.k);
    let ((_, ib), (_, jb), (_, pk)) = blk;
    let ((lda, a_start, a_span), (ldb, b_start, b_span), c_start) = block_ranges(g, blk);
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
        let words = GemmParams {
            m: mr as u32,
            n: ny as u32,
            k: pk as u32,
            lda: ldx as u32,
            ldb: ldy as u32,
            ldc: n as u32,
            sa: sx,
            sb: sy,
            sc,
            alpha: g.alpha,
            beta,
            kchunk: 0,
            zs: 0,
        };
        let groups = b.ctx.grid((ny as u32).div_ceil(8));
        b.ctx.dispatch(&pipe, &words, &[vx, vy, vc], groups);
        return;
    }

    let c_view = (&c.buf, c_start);
    tiled(
        b,
        g,
        (va, sa, lda),
        (vb, sb, ldb),
        c_view,
        (ib, jb, pk),
        beta,
        false,
    );
}

/// The tiled kernel (split-K when the block has few output tiles) on one
/// block of the product: A and B views with their shifts and leading
/// dimensions, C from element `c_start` (row stride `g.n`), the block's
/// rows, columns and k range `(ib, jb, pk)`. With `half_b`, B is f16 packed
/// two per u32 (`shaders/dense_gemm.wgsl`'s `HB`; its shift counts halves).
#[allow(clippy::too_many_arguments)]
pub(crate) fn tiled(
    b: &Wgpu,
    g: &Gemm,
    (va, sa, lda): (View<'_>, u32, usize),
    (vb, sb, ldb): (View<'_>, u32, usize),
    (c, c_start): (&wgpu::Buffer, usize),
    (ib, jb, pk): (usize, usize, usize),
    beta: f32,
    half_b: bool,
) {
    let n = g.n;
    let c_span = (ib - 1) * n + jb;
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
    let key = tiled_key(tile, ta, tb, split, half_b);
    let pipe = b.ctx.pipeline(&key, || {
        gemm_source(tile, &tiled_defs(ta, tb, split, half_b))
    });
    let gx = jb.div_ceil(tile.bn) as u32;
    let gy = ib.div_ceil(tile.bm) as u32;
    if split {
        let part = scratch(b, "dense/gemm_part", splits * ib * jb);
        let (vp, spp) = b.ctx.view(&part, 0, splits * ib * jb);
        let words = GemmParams {
            m: ib as u32,
            n: jb as u32,
            k: pk as u32,
            lda: lda as u32,
            ldb: ldb as u32,
            ldc: jb as u32,
            sa,
            sb,
            sc: spp,
            alpha: 1.0,
            beta: 0.0,
            kchunk: kchunk as u32,
            zs: (ib * jb) as u32,
        };
        b.ctx
            .dispatch(&pipe, &words, &[va, vb, vp], [gx, gy, splits as u32]);
        sumk(
            b,
            Some(&part),
            splits,
            0,
            c,
            c_start,
            ib,
            jb,
            n,
            g.alpha,
            beta,
        );
    } else {
        let (vc, sc) = b.ctx.view(c, c_start, c_span);
        let words = GemmParams {
            m: ib as u32,
            n: jb as u32,
            k: pk as u32,
            lda: lda as u32,
            ldb: ldb as u32,
            ldc: n as u32,
            sa,
            sb,
            sc,
            alpha: g.alpha,
            beta,
            kchunk: pk as u32,
            zs: 0,
        };
        b.ctx.dispatch(&pipe, &words, &[va, vb, vc], [gx, gy, 1]);
    }
}

/// The cache key of a tiled kernel (`H`: f16 B).
fn tiled_key(tile: Tile, ta: &str, tb: &str, split: bool, half_b: bool) -> String {
    format!(
        "dense/gemm/{}x{}x{}/{}x{}/{ta}{tb}{}{}",
        tile.bm,
        tile.bn,
        tile.bk,
        tile.tm,
        tile.tn,
        if split { "S" } else { "" },
        if half_b { "H" } else { "" }
    )
}

/// The defines of a tiled kernel.
fn tiled_defs<'a>(ta: &'a str, tb: &'a str, split: bool, half_b: bool) -> Vec<&'a str> {
    let mut defs = vec![ta, tb];
    if split {
        defs.push("SPLIT");
    }
    if half_b {
        defs.push("HB");
    }
    defs
}

/// Every kernel this module can build (see `crate::variants`): the three
/// tiles with each transpose combination, whole or split-K, B in f32 or f16; the matvec for
/// 1..=8 rows with A as stored or transposed (or read as vec4), C written
/// as is or transposed; the split-K sum.
#[cfg(test)]
pub(crate) fn variants() -> Vec<crate::variants::Variant> {
    use crate::variants::Variant;
    let p = std::mem::size_of::<GemmParams>();
    let mut v = Vec::new();
    for tile in [TILE_SMALL, TILE_TALL, TILE_LARGE] {
        for ta in ["NA", "TA"] {
            for tb in ["NB", "TB"] {
                for split in [false, true] {
                    for half_b in [false, true] {
                        let key = tiled_key(tile, ta, tb, split, half_b);
                        let src = gemm_source(tile, &tiled_defs(ta, tb, split, half_b));
                        v.push(Variant::new(&key, src, p));
                    }
                }
            }
        }
    }
    for mr in 1..=GEMV_MAX {
        for (lay, v4) in [("NA", false), ("NA", true), ("TA", false)] {
            for ct in [false, true] {
                let key = format!(
                    "dense/gemv/{mr}/{lay}{}{}",
                    if v4 { "/v4" } else { "" },
                    if ct { "/ct" } else { "" }
                );
                v.push(Variant::new(&key, gemv_source(mr, lay, v4, ct), p));
            }
        }
    }
    v.push(Variant::new(
        "dense/gemm_sumk",
        preprocess(SUMK_SRC, &[], &[]),
        p,
    ));
    v
}
