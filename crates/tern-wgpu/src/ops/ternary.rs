//! BitLinear on the device: packed ternary weights, the exact W1.58A8
//! product, the float-activation product and its transpose (the input
//! gradient), absmean re-ternarization and activation fake quantization.
//!
//! Layout of [`WTernary`]: 2-bit codes, 16 per u32 word, each row padded to a
//! multiple of 8 words (128 codes; the padding codes are 0). Word `k` of a row
//! holds columns `16k..16k + 16`; column `16k + 4t + i` sits in bits
//! `8i + 2t` as the unsigned value `u = code + 1` in `{0, 1, 2}`. So
//! `(word >> 2t) & 0x03030303` is four bytes lined up with four consecutive
//! int8 activations (one packed int8x4 word), and `dot4I8Packed` gives
//! `Σ u·x`; subtracting the row sum `Σ x` gives the exact `Σ code·x`. The
//! per-tensor scale is one f32 in its own device buffer (re-quantization
//! rewrites it on the device).
//!
//! Kernels (shaders `ternary_*.wgsl`, exact arithmetic in `exact.wgsl`):
//! - `ternary_quant`: per-row absmax int8 quantization of the activations into
//!   a scratch buffer of packed int8 (row scale `a` and `Σ x` per row), or the
//!   fake-quantized values `q / a`.
//! - `ternary_mv`: the integer product for up to 8 rows (decode), 32 threads
//!   per output feature reading its packed row in coalesced 16-byte groups.
//! - `ternary_mm`: the integer product for more rows, tiles of 64 (or 32)
//!   rows x 64 features with the int8 activations and packed weights staged
//!   in workgroup memory, each decoded weight word reused across the thread's
//!   4 (or 2) rows in registers.
//! - `ternary_float`: the float-activation product and the backward
//!   (transposed) product, 64 x 64 tiles with codes decoded to f32 per tile.
//! - `ternary_requant`: exact integer sum of |W|, the scale, the codes.
//!
//! Every buffer is bound in windows of at most `max_binding` bytes: the ops
//! split their work into rectangles (rows x column chunks) whose views fit,
//! accumulating over column chunks (in i32 for the exact product, so chunking
//! never changes a bit).

use bytemuck::{Pod, Zeroable};

use crate::ctx::View;
use crate::shader::preprocess;
use crate::{WBuf, Wgpu};
use tern_backend::{contract, BackendError, TernarySource};

pub(crate) const QUANT: &str = include_str!("../shaders/ternary_quant.wgsl");
pub(crate) const MV: &str = include_str!("../shaders/ternary_mv.wgsl");
pub(crate) const MM: &str = include_str!("../shaders/ternary_mm.wgsl");
pub(crate) const FLOAT: &str = include_str!("../shaders/ternary_float.wgsl");
pub(crate) const FLOAT_BWD: &str = include_str!("../shaders/ternary_float_bwd.wgsl");
pub(crate) const FLOAT_SUMK: &str = include_str!("../shaders/ternary_float_sumk.wgsl");
pub(crate) const REQUANT: &str = include_str!("../shaders/ternary_requant.wgsl");

/// Codes per packed word.
pub(crate) const CODES_PER_WORD: usize = 16;
/// Rows are padded to a multiple of this many words (128 codes).
const ROW_WORDS: usize = 8;
/// Activation rows up to which the product takes the matvec kernel.
pub(crate) const MV_MAX_ROWS: usize = 8;
/// Output features per workgroup of the matvec kernel.
const MV_FEATURES: usize = 8;
/// 16-byte groups of packed activations the fused matvec keeps in workgroup
/// memory (16 KiB with its 16 atomic words).
pub(crate) const MV_FUSED_VEC4: usize = 1020;
/// Tile of the tiled kernels (rows and features / columns).
const TILE: usize = 64;
/// The tiled integer product takes 64-row tiles when that gives at least this
/// many workgroups, 32-row tiles otherwise (more workgroups for small
/// products on wide GPUs, more reuse of each decoded weight word for large
/// ones). A tuning knob.
const MM_TALL_MIN_TILES: usize = 256;
/// The transposed float product takes the 128 x 128 tiles from this many
/// rows on (training's 128-row products), the 64 x 64 ones below.
const BWD_BIG_ROWS: usize = 65;
/// Workgroups the big transposed product aims for by splitting the reduction
/// (two per SM of a 132-SM GPU); each split covers at least
/// `BWD_SPLIT_MIN_K` features. Tuning knobs.
const BWD_SPLIT_TARGET: usize = 264;
const BWD_SPLIT_MIN_K: usize = 256;
/// Latent elements per workgroup of the re-quantization sum.
const SUM_PER_WG: usize = 4096;
/// u32 words of the re-quantization scratch (bins, flags, s).
const RQ_WORDS: usize = 514;
/// Host bytes packed before one upload copy.
const UPLOAD_CHUNK: usize = 16 << 20;

/// `struct P` of `shaders/ternary_quant.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Default, Debug, Pod, Zeroable)]
pub(crate) struct QuantParams {
    pub rows: u32,
    pub cols: u32,
    pub os: u32,
    pub w0: u32,
    pub nw: u32,
    pub xc0: u32,
    pub first: u32,
    /// 1e-5 as f32 bits
    pub eps: u32,
    pub sx: u32,
    pub ss: u32,
    pub so: u32,
}

/// `struct P` of `shaders/ternary_product_params.wgsl` (the matvec and the
/// tiled W1.58A8 product).
#[repr(C)]
#[derive(Clone, Copy, Default, Debug, Pod, Zeroable)]
pub(crate) struct ProductParams {
    pub no: u32,
    pub nr: u32,
    pub wpr4: u32,
    pub nk: u32,
    pub qs4: u32,
    pub ys: u32,
    pub first: u32,
    pub last: u32,
    pub sw: u32,
    pub sq: u32,
    pub ss: u32,
    pub sc: u32,
    pub sy: u32,
    pub sa: u32,
    pub cols: u32,
    /// 1e-5 as f32 bits
    pub eps: u32,
}

/// `struct P` of `shaders/ternary_float_params.wgsl` (the float products,
/// forward and transposed, and the sum of the split transposed product).
#[repr(C)]
#[derive(Clone, Copy, Default, Debug, Pod, Zeroable)]
pub(crate) struct FloatParams {
    pub nr: u32,
    pub nn: u32,
    pub nk: u32,
    pub astride: u32,
    pub wpr: u32,
    pub os: u32,
    pub first: u32,
    pub sa: u32,
    pub sw: u32,
    pub sc: u32,
    pub so: u32,
    pub kchunk: u32,
    pub zs: u32,
    pub sp: u32,
}

/// `struct P` of `shaders/ternary_requant.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Default, Debug, Pod, Zeroable)]
pub(crate) struct RequantParams {
    pub n: u32,
    pub sx: u32,
    pub sg: u32,
    pub nr: u32,
    pub nw: u32,
    pub w0: u32,
    pub xc0: u32,
    pub cols: u32,
    pub wpr: u32,
    pub sc: u32,
    /// the element count as f32 bits
    pub count: u32,
    /// 1e-5 as f32 bits
    pub eps: u32,
}

/// A packed ternary matrix on the device (see the module docs).
pub struct WTernary {
    pub(crate) codes: wgpu::Buffer,
    /// One f32: the per-tensor scale (device-resident: re-quantization updates it).
    pub(crate) scale: wgpu::Buffer,
    pub(crate) rows: usize,
    pub(crate) cols: usize,
    /// Words per row (a multiple of [`ROW_WORDS`]).
    pub(crate) wpr: usize,
    owner: crate::Owner,
}

impl Drop for WTernary {
    fn drop(&mut self) {
        self.owner.release(&self.codes);
        self.owner.release(&self.scale);
    }
}

fn words_per_row(cols: usize) -> usize {
    cols.div_ceil(ROW_WORDS * CODES_PER_WORD) * ROW_WORDS
}

/// Packs one row of codes into `out` (`words_per_row(codes.len())` words).
fn pack_row(codes: &[i8], out: &mut [u32]) {
    for (k, word) in out.iter_mut().enumerate() {
        let mut v = 0u32;
        for j in 0..CODES_PER_WORD {
            let c = k * CODES_PER_WORD + j;
            let u = if c < codes.len() {
                (codes[c] + 1) as u32
            } else {
                1
            };
            v |= u << (8 * (j % 4) + 2 * (j / 4));
        }
        *word = v;
    }
}

pub(crate) fn upload_ternary(b: &Wgpu, w: &dyn TernarySource) -> Result<WTernary, BackendError> {
    let (rows, cols) = (w.rows(), w.cols());
    let name = b.ctx.name();
    contract::ternary_source(&name, w)?;
    let scale = w.scale();
    let wpr = words_per_row(cols);
    // Every word and the scale are written below, so pooled contents do not matter.
    let (codes, _) = b.ctx.buffer("ternary codes", (rows * wpr * 4) as u64)?;
    let (scale_buf, _) = b.ctx.buffer("ternary scale", 4)?;
    let t = WTernary {
        codes,
        scale: scale_buf,
        rows,
        cols,
        wpr,
        owner: b.owner(),
    };
    // Stream the rows: one row of codes unpacked at a time, packed words
    // gathered into a bounded host buffer and copied chunk by chunk.
    let chunk_rows = (UPLOAD_CHUNK / (wpr * 4)).max(1);
    let mut row = vec![0i8; cols];
    let mut host: Vec<u32> = vec![0; chunk_rows.min(rows) * wpr];
    let mut r0 = 0;
    while r0 < rows {
        let n = chunk_rows.min(rows - r0);
        for i in 0..n {
            let r = r0 + i;
            w.row_codes(r, &mut row);
            contract::ternary_row(&name, w, r, &row)?;
            pack_row(&row, &mut host[i * wpr..(i + 1) * wpr]);
        }
        b.ctx.write_bytes(
            &t.codes,
            (r0 * wpr * 4) as u64,
            bytemuck::cast_slice(&host[..n * wpr]),
        );
        r0 += n;
        if r0 < rows {
            // keep at most one chunk of staging memory in flight
            b.ctx.flush();
        }
    }
    b.ctx.write_bytes(&t.scale, 0, bytemuck::bytes_of(&scale));
    Ok(t)
}

pub(crate) fn ternary_bytes(w: &WTernary) -> u64 {
    w.codes.size() + 4
}

pub(crate) fn ternary_shape(w: &WTernary) -> (usize, usize) {
    (w.rows, w.cols)
}

// ---- windows ------------------------------------------------------------------

/// Elements spanned by `nr` rows of `nc` elements at row stride `stride`.
pub(crate) fn span(stride: usize, nr: usize, nc: usize) -> usize {
    if nr == 0 {
        0
    } else {
        (nr - 1) * stride + nc
    }
}

/// Most rows of `nc` elements at row stride `stride` that `win` elements hold.
fn rows_fit(win: usize, stride: usize, nc: usize) -> usize {
    if nc > win {
        0
    } else {
        (win - nc).checked_div(stride).map_or(usize::MAX, |n| n + 1)
    }
}

/// Rows `nr` and features `no` per block such that the `[nr, no]` block of
/// an output with row stride `os` fits a window too; then rounded down to
/// whole tiles where the block is not the whole extent.
fn fit_block(
    win: usize,
    rows: usize,
    nr: usize,
    out: usize,
    no: usize,
    tr: usize,
    to: usize,
) -> (usize, usize) {
    let (mut nr, mut no) = (nr.max(1), no.max(1));
    if span(out, nr, no) > win {
        nr = rows_fit(win, out, no);
        if nr == 0 {
            nr = 1;
            no = no.min(win);
        }
    }
    if nr < rows && nr > tr {
        nr -= nr % tr;
    }
    if no < out && no > to {
        no -= no % to;
    }
    (nr, no)
}

/// A view of 4-element (16-byte) groups: `start` and `n` in u32 elements,
/// multiples of 4; the shift is returned in groups.
pub(crate) fn view4<'a>(
    b: &Wgpu,
    buf: &'a wgpu::Buffer,
    start: usize,
    n: usize,
) -> (View<'a>, u32) {
    debug_assert!(start % 4 == 0 && n % 4 == 0);
    let (v, s) = b.ctx.view(buf, start, n);
    debug_assert!(s % 4 == 0);
    (v, s / 4)
}

// The register tiles of the tiled kernels are written out as named scalars
// (`s{i}{j}`, `t{i}{j}`) by the generators below: a private array indexed in a
// loop is placed in slow local memory by some GPU compilers (NVIDIA's among
// them), which made these kernels an order of magnitude slower.

/// `ternary_mm.wgsl`: `tm x 4` i32 accumulators.
fn mm_decl(tm: usize) -> String {
    let mut s = String::new();
    for i in 0..tm {
        for j in 0..4 {
            s += &format!("    var s{i}{j}: i32 = 0;\n");
        }
    }
    s
}

/// One packed weight word column `k` of a step: 4 features x 4 code groups.
fn mm_step(tm: usize) -> String {
    let mut s = String::new();
    for j in 0..4 {
        s += &format!("            let wd{j} = ws[k * BN + tx + {}u];\n", 16 * j);
    }
    for q in 0..4 {
        for i in 0..tm {
            s += &format!(
                "            let x{q}{i} = xs[(4u * k + {q}u) * BM + ty + {}u];\n",
                16 * i
            );
        }
        for j in 0..4 {
            s += &format!("            let d{q}{j} = (wd{j} >> {}u) & M2;\n", 2 * q);
            for i in 0..tm {
                s += &format!("            s{i}{j} += dot4I8Packed(d{q}{j}, x{q}{i});\n");
            }
        }
    }
    s
}

/// `ternary_mm.wgsl` with `tm` rows per thread.
fn mm_source(tm: usize) -> String {
    shader(
        MM,
        &[],
        &[
            ("TM", tm.to_string()),
            ("XS", (32 * 16 * tm).to_string()),
            ("DECL", mm_decl(tm)),
            ("STEP", mm_step(tm)),
            ("STORE", mm_store(tm)),
        ],
    )
}

fn mm_store(tm: usize) -> String {
    let mut s = String::new();
    for i in 0..tm {
        for j in 0..4 {
            s += &format!(
                "    put(r0 + ty + {}u, o0 + tx + {}u, s{i}{j}, scale);\n",
                16 * i,
                16 * j
            );
        }
    }
    s
}

/// The element type of the decoded-code tiles: the codes are -1, 0 and 1,
/// exact in f16, so adapters with SHADER_F16 stage them at half the size.
fn code_type(f16: bool) -> &'static str {
    if f16 {
        "f16"
    } else {
        "f32"
    }
}

/// `ternary_float.wgsl`: 4 x 4 outputs per thread, a two-level sum.
fn float_subs(f16: bool) -> [(&'static str, String); 4] {
    let (mut decl, mut step, mut store) = (String::new(), String::new(), String::new());
    for i in 0..4 {
        for j in 0..4 {
            decl += &format!("    var t{i}{j}: f32 = 0.0;\n");
            step += &format!("        var p{i}{j}: f32 = 0.0;\n");
            store += &format!(
                "    put(r0 + ty + {}u, n0 + tx + {}u, t{i}{j} * scale);\n",
                16 * i,
                16 * j
            );
        }
    }
    step += "        for (var k = 0u; k < BK; k++) {\n";
    for i in 0..4 {
        step += &format!("            let a{i} = at[k * BM + ty + {}u];\n", 16 * i);
        step += &format!(
            "            let b{i} = f32(bs[k * BN + tx + {}u]);\n",
            16 * i
        );
    }
    for i in 0..4 {
        for j in 0..4 {
            step += &format!("            p{i}{j} += a{i} * b{j};\n");
        }
    }
    step += "        }\n";
    for i in 0..4 {
        for j in 0..4 {
            step += &format!("        t{i}{j} += p{i}{j};\n");
        }
    }
    [
        ("DECL", decl),
        ("STEP", step),
        ("STORE", store),
        ("CT", code_type(f16).into()),
    ]
}

/// `ternary_float_bwd.wgsl`: 8 x 8 f32 accumulators per thread (two vec4
/// column groups of 8 rows).
/// Its code tiles stay f32 even with SHADER_F16: converting them back in the
/// inner loop cost 13% of a 1B LoRA step on an H100 (1,248 -> 1,080 tok/s).
fn bwd_source(defs: &[&str]) -> String {
    let (mut decl, mut fma, mut write) = (String::new(), String::new(), String::new());
    for r in 0..8 {
        for h in 0..2 {
            decl += &format!("    var c{r}_{h} = vec4<f32>(0.0);\n");
        }
    }
    for g in 0..2 {
        fma += &format!("            let a{g} = tile_a[kk * PA + ty + {g}u * TY];\n");
    }
    for h in 0..2 {
        fma += &format!("            let b{h} = vec4<f32>(tile_b[kk * PB + tx + {h}u * TX]);\n");
    }
    for g in 0..2 {
        for (rr, comp) in ["x", "y", "z", "w"].iter().enumerate() {
            let r = g * 4 + rr;
            for h in 0..2 {
                fma += &format!("            c{r}_{h} += a{g}.{comp} * b{h};\n");
                write += &format!(
                    "    write4(i0 + (ty + {g}u * TY) * 4u + {rr}u, j0 + (tx + {h}u * TX) * 4u, c{r}_{h}, scale);\n"
                );
            }
        }
    }
    shader(
        FLOAT_BWD,
        defs,
        &[
            ("DECL", decl),
            ("FMA", fma),
            ("WRITE", write),
            ("CT", code_type(false).into()),
        ],
    )
}

fn shader(src: &str, defs: &[&str], subs: &[(&str, String)]) -> String {
    preprocess(src, defs, subs)
}

// ---- activation quantization ----------------------------------------------------

/// Where the quantizer writes.
enum QOut<'a> {
    /// Packed int8 codes, `words` u32 per row (zero past the columns), plus
    /// `a` and `Σ q` per row in the stats.
    Packed { buf: &'a wgpu::Buffer, words: usize },
    /// Fake-quantized f32 values (`[rows, cols]`).
    Fake(&'a wgpu::Buffer),
}

/// Per-row quantization of `x` (`[rows, cols]`); `st` holds 4 u32 per row:
/// max |x| bits, `a` bits, `Σ q`, unused.
fn quantize(b: &Wgpu, x: &wgpu::Buffer, rows: usize, cols: usize, st: &wgpu::Buffer, out: QOut) {
    let win = b.ctx.window_elems();
    let (words, obuf, os, packed) = match out {
        QOut::Packed { buf, words } => (words, buf, words, true),
        QOut::Fake(buf) => (cols.div_ceil(4), buf, cols, false),
    };
    // A chunk of words spans 4 columns of x per word.
    let nwc = words.min((win / 16) * 4).max(4);
    assert!(4 * nwc <= win, "ternary quantize: binding window too small");
    let fused = nwc >= words;
    let xspan = (4 * nwc).min(cols);
    let ospan = if packed { nwc } else { xspan };
    let rq = rows
        .min(win / 4)
        .min(rows_fit(win, cols, xspan))
        .min(rows_fit(win, os, ospan))
        .max(1);
    let eps = 1e-5f32.to_bits();
    let kind = if packed { "XQ" } else { "FQ" };
    let rowmax = (!fused).then(|| {
        b.ctx
            .pipeline("ternary/rowmax", || shader(QUANT, &["ROWMAX"], &[]))
    });
    let mode = if fused { "FUSED" } else { "SPLIT" };
    let quant = b.ctx.pipeline(&format!("ternary/quant/{kind}/{mode}"), || {
        shader(QUANT, &["QUANT", kind, mode], &[])
    });
    let mut r0 = 0;
    while r0 < rows {
        let nr = rq.min(rows - r0);
        let (vs, ss) = b.ctx.view(st, r0 * 4, nr * 4);
        let groups = b.ctx.grid(nr as u32);
        // split rows: the max over every chunk first, then the codes
        for pass in [0, 1] {
            if pass == 0 && rowmax.is_none() {
                continue;
            }
            let mut w0 = 0;
            while w0 < words {
                let nw = nwc.min(words - w0);
                let xc0 = (4 * w0).min(cols - 1);
                let xc1 = (4 * (w0 + nw)).min(cols).max(xc0 + 1);
                let (vx, sx) = b.ctx.view(x, r0 * cols + xc0, span(cols, nr, xc1 - xc0));
                let first = (w0 == 0) as u32;
                let mut prm = QuantParams {
                    rows: nr as u32,
                    cols: cols as u32,
                    os: os as u32,
                    w0: w0 as u32,
                    nw: nw as u32,
                    xc0: xc0 as u32,
                    first,
                    eps,
                    sx,
                    ss,
                    so: 0,
                };
                if let (0, Some(rowmax)) = (pass, &rowmax) {
                    b.ctx.dispatch(rowmax, &prm, &[vx, vs], groups);
                } else {
                    let (vo, so) = if packed {
                        b.ctx.view(obuf, r0 * os + w0, span(os, nr, nw))
                    } else {
                        b.ctx.view(obuf, r0 * os + xc0, span(os, nr, xc1 - xc0))
                    };
                    prm.so = so;
                    b.ctx.dispatch(&quant, &prm, &[vx, vs, vo], groups);
                }
                w0 += nw;
            }
        }
        r0 += nr;
    }
}

pub(crate) fn fake_quant_act(b: &Wgpu, x: &WBuf, y: &mut WBuf, rows: usize, cols: usize) {
    contract::fake_quant_act("wgpu", x.len, y.len, rows, cols);
    if rows == 0 {
        return;
    }
    let st = b.ctx.scratch_or_defer("ternary/stats", (rows * 16) as u64);
    quantize(b, &x.buf, rows, cols, &st, QOut::Fake(&y.buf));
}

fn scratch(b: &Wgpu, key: &str, bytes: usize) -> wgpu::Buffer {
    b.ctx
        .scratch_or_defer(key, (bytes.max(16).next_multiple_of(16)) as u64)
}

// ---- W1.58A8 product ----------------------------------------------------------------

pub(crate) fn ternary_matmul(b: &Wgpu, w: &WTernary, x: &WBuf, y: &mut WBuf, rows: usize) {
    let (out, cols, wpr) = (w.rows, w.cols, w.wpr);
    contract::ternary("wgpu", "ternary_matmul", (out, cols), (x.len, y.len), rows);
    if rows == 0 || out == 0 {
        return;
    }
    // Weight words holding real columns, rounded up to whole 16-byte groups;
    // the activation rows are packed to the same length (4 u32 per word).
    let nwv = cols.div_ceil(4 * CODES_PER_WORD) * 4;
    let qs = 4 * nwv;
    let win = b.ctx.window_elems();
    let mv = rows <= MV_MAX_ROWS;
    // Weight words per chunk: one row of activations (4 u32 per word) fits.
    let kc = nwv.min((win / 16) * 4);
    assert!(kc >= 4, "ternary_matmul: binding window too small");
    let split = kc < nwv;
    let nr0 = rows.min(rows_fit(win, qs, 4 * kc)).min(win / 4).min(if mv {
        MV_MAX_ROWS
    } else {
        usize::MAX
    });
    let no0 = out.min(rows_fit(win, wpr, kc));
    // rows per thread of the tiled kernel (tiles of 16 tm rows)
    let tm = if rows.div_ceil(TILE) * out.div_ceil(TILE) >= MM_TALL_MIN_TILES {
        4
    } else {
        2
    };
    let (tr, to) = if mv {
        (MV_MAX_ROWS, MV_FEATURES)
    } else {
        (16 * tm, TILE)
    };
    let (rb, ob) = fit_block(win, rows, nr0, out, no0, tr, to);
    // The matvec quantizes the activations itself (one dispatch) when the
    // weight rows are not chunked, a block's rows of x fit one binding and
    // their packed codes fit the kernel's workgroup memory.
    if mv && !split && rb * cols <= win && rb * nwv <= MV_FUSED_VEC4 {
        matvec_fused(b, w, x, y, rows, (rb, ob), nwv);
        return;
    }
    let xq = scratch(b, "ternary/xq", rows * qs * 4);
    let st = scratch(b, "ternary/stats", rows * 16);
    quantize(
        b,
        &x.buf,
        rows,
        cols,
        &st,
        QOut::Packed {
            buf: &xq,
            words: qs,
        },
    );
    let acc = scratch(b, "ternary/acc", if split { rows * out * 4 } else { 16 });
    let pipe = if mv {
        let nr = rb.next_power_of_two().min(MV_MAX_ROWS);
        b.ctx
            .pipeline(&format!("ternary/mv/{nr}"), || mv_shader(nr, false))
    } else {
        b.ctx
            .pipeline(&format!("ternary/mm/{tm}"), || mm_source(tm))
    };
    let (vc, sc) = b.ctx.view(&w.scale, 0, 1);
    let mut r0 = 0;
    while r0 < rows {
        let nr = rb.min(rows - r0);
        let (vs, ss) = b.ctx.view(&st, r0 * 4, nr * 4);
        let mut o0 = 0;
        while o0 < out {
            let no = ob.min(out - o0);
            let (vy, sy) = b.ctx.view(&y.buf, r0 * out + o0, span(out, nr, no));
            let (va, sa) = if split {
                b.ctx.view(&acc, r0 * out + o0, span(out, nr, no))
            } else {
                b.ctx.view(&acc, 0, 4)
            };
            let groups = if mv {
                b.ctx.grid(no.div_ceil(MV_FEATURES) as u32)
            } else {
                [no.div_ceil(TILE) as u32, nr.div_ceil(tr) as u32, 1]
            };
            let mut k0 = 0;
            while k0 < nwv {
                let nk = kc.min(nwv - k0);
                let (vw, sw) = view4(b, &w.codes, o0 * wpr + k0, span(wpr, no, nk));
                let (vq, sq) = view4(b, &xq, r0 * qs + 4 * k0, span(qs, nr, 4 * nk));
                let prm = ProductParams {
                    no: no as u32,
                    nr: nr as u32,
                    wpr4: (wpr / 4) as u32,
                    nk: nk as u32,
                    qs4: (qs / 4) as u32,
                    ys: out as u32,
                    first: (k0 == 0) as u32,
                    last: (k0 + nk == nwv) as u32,
                    sw,
                    sq,
                    ss,
                    sc,
                    sy,
                    sa,
                    cols: 0,
                    eps: 0,
                };
                b.ctx
                    .dispatch(&pipe, &prm, &[vw, vq, vs, vc, vy, va], groups);
                k0 += nk;
            }
            o0 += no;
        }
        r0 += nr;
    }
}

/// The slots of the matvec kernels (`ternary_mv.wgsl`, `ternary_fused.wgsl`)
/// for `nr` rows: the per-row sums as named registers.
pub(crate) fn mv_subs(nr: usize) -> Vec<(&'static str, String)> {
    let (mut decl, mut step2, mut step1, mut put, mut reduce) = (
        String::new(),
        String::new(),
        String::new(),
        String::new(),
        String::new(),
    );
    for r in 0..nr {
        decl += &format!("    var part{r}: i32 = 0;\n");
        let guard = if r == 0 {
            String::new()
        } else {
            format!("if ({r}u < p.nr) ")
        };
        step2 += &format!(
            "            {guard}{{ part{r} += dot64(w0, {r}u, k) + dot64(w1, {r}u, k + LANES); }}\n"
        );
        step1 += &format!("            {guard}{{ part{r} += dot64(w0, {r}u, k); }}\n");
        put += &format!("    wr({r}u * 256u + t, part{r});\n");
        reduce += &format!(
            "            wr({r}u * 256u + t, rd({r}u * 256u + t) + rd({r}u * 256u + t + s));\n"
        );
    }
    vec![
        ("NR", nr.to_string()),
        ("RED", (nr * 256).to_string()),
        ("XSV", MV_FUSED_VEC4.to_string()),
        ("DECL", decl),
        ("STEP2", step2),
        ("STEP1", step1),
        ("PUT", put),
        ("REDUCE", reduce),
    ]
}

/// `ternary_mv.wgsl` for `nr` rows.
fn mv_shader(nr: usize, fused: bool) -> String {
    let defs: &[&str] = if fused { &["FUSED"] } else { &[] };
    shader(MV, defs, &mv_subs(nr))
}

/// The W1.58A8 matvec in one dispatch per block (the kernel quantizes the
/// activations): blocks of `rb` rows x `ob` features, whole weight rows.
fn matvec_fused(
    b: &Wgpu,
    w: &WTernary,
    x: &WBuf,
    y: &mut WBuf,
    rows: usize,
    (rb, ob): (usize, usize),
    nwv: usize,
) {
    let (out, cols, wpr) = (w.rows, w.cols, w.wpr);
    let nr_max = rb.next_power_of_two().min(MV_MAX_ROWS);
    let pipe = b.ctx.pipeline(&format!("ternary/mv/fused/{nr_max}"), || {
        mv_shader(nr_max, true)
    });
    let (vc, sc) = b.ctx.view(&w.scale, 0, 1);
    let mut r0 = 0;
    while r0 < rows {
        let nr = rb.min(rows - r0);
        let (vx, sx) = b.ctx.view(&x.buf, r0 * cols, nr * cols);
        let mut o0 = 0;
        while o0 < out {
            let no = ob.min(out - o0);
            let (vy, sy) = b.ctx.view(&y.buf, r0 * out + o0, span(out, nr, no));
            let (vw, sw) = view4(b, &w.codes, o0 * wpr, span(wpr, no, nwv));
            let prm = ProductParams {
                no: no as u32,
                nr: nr as u32,
                wpr4: (wpr / 4) as u32,
                nk: nwv as u32,
                qs4: nwv as u32,
                ys: out as u32,
                first: 1,
                last: 1,
                sw,
                sq: sx,
                ss: 0,
                sc,
                sy,
                sa: 0,
                cols: cols as u32,
                eps: 1e-5f32.to_bits(),
            };
            let groups = b.ctx.grid(no.div_ceil(MV_FEATURES) as u32);
            b.ctx.dispatch(&pipe, &prm, &[vw, vx, vc, vy], groups);
            o0 += no;
        }
        r0 += nr;
    }
}

// ---- float products ----------------------------------------------------------------

pub(crate) fn ternary_matmul_float(b: &Wgpu, w: &WTernary, x: &WBuf, y: &mut WBuf, rows: usize) {
    let (out, cols, wpr) = (w.rows, w.cols, w.wpr);
    contract::ternary(
        "wgpu",
        "ternary_matmul_float",
        (out, cols),
        (x.len, y.len),
        rows,
    );
    if rows == 0 || out == 0 {
        return;
    }
    let win = b.ctx.window_elems();
    // words holding real columns; chunks of whole words
    let nwf = cols.div_ceil(CODES_PER_WORD);
    let kc = nwf.min(win / CODES_PER_WORD);
    assert!(kc >= 1, "ternary_matmul_float: binding window too small");
    let xcols = (kc * CODES_PER_WORD).min(cols);
    let nr0 = rows.min(rows_fit(win, cols, xcols));
    let no0 = out.min(rows_fit(win, wpr, kc));
    let (rb, ob) = fit_block(win, rows, nr0, out, no0, TILE, TILE);
    let pipe = b.ctx.pipeline("ternary/float/fwd", || {
        shader(FLOAT, &["FWD"], &float_subs(b.ctx.f16))
    });
    let (vc, sc) = b.ctx.view(&w.scale, 0, 1);
    let mut r0 = 0;
    while r0 < rows {
        let nr = rb.min(rows - r0);
        let mut o0 = 0;
        while o0 < out {
            let no = ob.min(out - o0);
            let (vy, sy) = b.ctx.view(&y.buf, r0 * out + o0, span(out, nr, no));
            let groups = [no.div_ceil(TILE) as u32, nr.div_ceil(TILE) as u32, 1];
            let mut k0 = 0;
            while k0 < nwf {
                let nk = kc.min(nwf - k0);
                let c0 = k0 * CODES_PER_WORD;
                let nc = (nk * CODES_PER_WORD).min(cols - c0);
                let (vx, sx) = b.ctx.view(&x.buf, r0 * cols + c0, span(cols, nr, nc));
                let (vw, sw) = b.ctx.view(&w.codes, o0 * wpr + k0, span(wpr, no, nk));
                let prm = FloatParams {
                    nr: nr as u32,
                    nn: no as u32,
                    nk: nc as u32,
                    astride: cols as u32,
                    wpr: wpr as u32,
                    os: out as u32,
                    first: (k0 == 0) as u32,
                    sa: sx,
                    sw,
                    sc,
                    so: sy,
                    ..Default::default()
                };
                b.ctx.dispatch(&pipe, &prm, &[vx, vw, vc, vy], groups);
                k0 += nk;
            }
            o0 += no;
        }
        r0 += nr;
    }
}

pub(crate) fn ternary_matmul_backward(
    b: &Wgpu,
    w: &WTernary,
    dy: &WBuf,
    dx: &mut WBuf,
    rows: usize,
) {
    let (out, cols, wpr) = (w.rows, w.cols, w.wpr);
    contract::ternary(
        "wgpu",
        "ternary_matmul_backward",
        (out, cols),
        (dy.len, dx.len),
        rows,
    );
    if rows == 0 {
        return;
    }
    let win = b.ctx.window_elems();
    // Columns of dx per chunk: whole 64-column tiles of 4 words where the row
    // is longer than a window.
    let nwf = cols.div_ceil(CODES_PER_WORD);
    let mut nn = nwf.min(win / CODES_PER_WORD);
    if nn < nwf && nn >= 4 {
        nn -= nn % 4;
    }
    assert!(nn >= 1, "ternary_matmul_backward: binding window too small");
    let dxcols = (nn * CODES_PER_WORD).min(cols);
    // Features (the reduction) per chunk: the weight rows of the chunk fit.
    let ko = out.min(rows_fit(win, wpr, nn)).max(1);
    let nr0 = rows
        .min(rows_fit(win, cols, dxcols))
        .min(rows_fit(win, out, ko).max(1));
    let nr0 = if nr0 < rows && nr0 > TILE {
        nr0 - nr0 % TILE
    } else {
        nr0.max(1)
    };
    let pipe = b.ctx.pipeline("ternary/float/bwd", || {
        shader(FLOAT, &["BWD"], &float_subs(b.ctx.f16))
    });
    let (vc, sc) = b.ctx.view(&w.scale, 0, 1);
    let mut r0 = 0;
    while r0 < rows {
        let nr = nr0.min(rows - r0);
        let mut n0 = 0;
        while n0 < nwf {
            let nw = nn.min(nwf - n0);
            let c0 = n0 * CODES_PER_WORD;
            let nc = (nw * CODES_PER_WORD).min(cols - c0);
            let groups = [nc.div_ceil(TILE) as u32, nr.div_ceil(TILE) as u32, 1];
            let mut k0 = 0;
            loop {
                let nk = ko.min(out - k0);
                let (vd, sd) = b.ctx.view(&dy.buf, r0 * out + k0, span(out, nr, nk));
                let (vw, sw) = if nk == 0 {
                    b.ctx.view(&w.codes, 0, 1)
                } else {
                    b.ctx.view(&w.codes, k0 * wpr + n0, span(wpr, nk, nw))
                };
                if nr >= BWD_BIG_ROWS {
                    bwd_big(
                        b,
                        (vd, sd),
                        (vw, sw),
                        (vc, sc),
                        (&dx.buf, r0 * cols + c0),
                        FloatParams {
                            nr: nr as u32,
                            nn: nc as u32,
                            nk: nk as u32,
                            astride: out as u32,
                            wpr: wpr as u32,
                            os: cols as u32,
                            first: (k0 == 0) as u32,
                            ..Default::default()
                        },
                    );
                } else {
                    let (vx, sx) = b.ctx.view(&dx.buf, r0 * cols + c0, span(cols, nr, nc));
                    let prm = FloatParams {
                        nr: nr as u32,
                        nn: nc as u32,
                        nk: nk as u32,
                        astride: out as u32,
                        wpr: wpr as u32,
                        os: cols as u32,
                        first: (k0 == 0) as u32,
                        sa: sd,
                        sw,
                        sc,
                        so: sx,
                        ..Default::default()
                    };
                    b.ctx.dispatch(&pipe, &prm, &[vd, vw, vc, vx], groups);
                }
                k0 += nk;
                if k0 >= out {
                    break;
                }
            }
            n0 += nw;
        }
        r0 += nr;
    }
}

/// One block of the transposed product with the 128 x 128 tiles: `head`
/// holds the block's sizes, strides and `first` (its shifts are filled in
/// here); the reduction is split over workgroups (partial sums in a
/// scratch, then summed in order) when the block has few tiles.
fn bwd_big(
    b: &Wgpu,
    (vd, sd): (View, u32),
    (vw, sw): (View, u32),
    (vc, sc): (View, u32),
    (dx, start): (&wgpu::Buffer, usize),
    head: FloatParams,
) {
    let (nr, nc, nk) = (head.nr as usize, head.nn as usize, head.nk as usize);
    let os = head.os as usize;
    let tiles = nr.div_ceil(128) * nc.div_ceil(128);
    let win = b.ctx.window_elems();
    let mut splits = 1;
    if tiles < BWD_SPLIT_TARGET && nk >= 2 * BWD_SPLIT_MIN_K {
        splits = BWD_SPLIT_TARGET
            .div_ceil(tiles)
            .min(nk / BWD_SPLIT_MIN_K)
            .min(64)
            .min(win / (nr * nc).max(1));
    }
    let kchunk = if splits > 1 {
        nk.div_ceil(splits).next_multiple_of(8)
    } else {
        nk.max(1)
    };
    let splits = nk.div_ceil(kchunk).max(1);
    let (vx, sx) = b.ctx.view(dx, start, span(os, nr, nc));
    let groups = [
        nc.div_ceil(128) as u32,
        nr.div_ceil(128) as u32,
        splits as u32,
    ];
    if splits == 1 {
        let pipe = b.ctx.pipeline("ternary/float/bwd128", || bwd_source(&[]));
        let prm = FloatParams {
            sa: sd,
            sw,
            sc,
            so: sx,
            kchunk: kchunk as u32,
            zs: 0,
            sp: 0,
            ..head
        };
        b.ctx.dispatch(&pipe, &prm, &[vd, vw, vc, vx], groups);
        return;
    }
    let zs = nr * nc;
    let part = scratch(b, "ternary/bwd_part", splits * zs * 4);
    let (vp, sp) = b.ctx.view(&part, 0, splits * zs);
    let pipe = b
        .ctx
        .pipeline("ternary/float/bwd128/split", || bwd_source(&["SPLIT"]));
    let prm = FloatParams {
        sa: sd,
        sw,
        sc,
        so: sx,
        kchunk: kchunk as u32,
        zs: zs as u32,
        sp,
        ..head
    };
    b.ctx.dispatch(&pipe, &prm, &[vd, vw, vp], groups);
    let sum = b
        .ctx
        .pipeline("ternary/float/bwd128/sumk", || shader(FLOAT_SUMK, &[], &[]));
    let prm = FloatParams {
        sa: 0,
        sw: 0,
        sc,
        so: sx,
        kchunk: splits as u32,
        zs: zs as u32,
        sp,
        ..head
    };
    let g = b.ctx.grid(zs.div_ceil(256) as u32);
    b.ctx.dispatch(&sum, &prm, &[vp, vc, vx], g);
}

// ---- re-quantization ------------------------------------------------------------------

/// `ternary_requant.wgsl`: the pass `name` with `wgs` threads.
fn requant_source(name: &str, wgs: u32) -> String {
    shader(
        REQUANT,
        &[name],
        &[("PER_WG", SUM_PER_WG.to_string()), ("WGS", wgs.to_string())],
    )
}

pub(crate) fn requantize_ternary(b: &Wgpu, latent: &WBuf, w: &mut WTernary) {
    let (rows, cols, wpr) = (w.rows, w.cols, w.wpr);
    let n = rows * cols;
    contract::requantize_ternary("wgpu", latent.len, (rows, cols));
    if n == 0 {
        return;
    }
    let win = b.ctx.window_elems();
    assert!(
        win >= RQ_WORDS,
        "requantize_ternary: binding window too small"
    );
    let g = scratch(b, "ternary/requant", RQ_WORDS * 4);
    let pipe = |name: &str, wgs: u32| {
        b.ctx.pipeline(&format!("ternary/requant/{name}"), || {
            requant_source(name, wgs)
        })
    };
    let (vg, sg) = b.ctx.view(&g, 0, RQ_WORDS);
    let prm = RequantParams {
        sg,
        ..Default::default()
    };
    b.ctx.dispatch(&pipe("CLEAR", 256), &prm, &[vg], [1, 1, 1]);

    let sum = pipe("SUM", 256);
    let mut start = 0;
    while start < n {
        let nn = win.min(n - start);
        let (vx, sx) = b.ctx.view(&latent.buf, start, nn);
        let prm = RequantParams {
            n: nn as u32,
            sx,
            sg,
            ..Default::default()
        };
        let groups = b.ctx.grid(nn.div_ceil(SUM_PER_WG) as u32);
        b.ctx.dispatch(&sum, &prm, &[vx, vg], groups);
        start += nn;
    }

    let (vc, sc) = b.ctx.view(&w.scale, 0, 1);
    let prm = RequantParams {
        sg,
        sc,
        count: (n as f32).to_bits(),
        eps: 1e-5f32.to_bits(),
        ..Default::default()
    };
    b.ctx
        .dispatch(&pipe("FINAL", 1), &prm, &[vg, vc], [1, 1, 1]);

    // Codes: chunks of words of each row (16 latent columns per word).
    let codes = pipe("CODES", 256);
    let nwc = wpr.min(win / CODES_PER_WORD).max(1);
    let xspan = (nwc * CODES_PER_WORD).min(cols);
    let rr = rows
        .min(rows_fit(win, cols, xspan))
        .min(rows_fit(win, wpr, nwc))
        .max(1);
    let mut r0 = 0;
    while r0 < rows {
        let nr = rr.min(rows - r0);
        let mut w0 = 0;
        while w0 < wpr {
            let nw = nwc.min(wpr - w0);
            let xc0 = (CODES_PER_WORD * w0).min(cols - 1);
            let xc1 = (CODES_PER_WORD * (w0 + nw)).min(cols).max(xc0 + 1);
            let (vx, sx) = b
                .ctx
                .view(&latent.buf, r0 * cols + xc0, span(cols, nr, xc1 - xc0));
            let (vw, sw) = b.ctx.view(&w.codes, r0 * wpr + w0, span(wpr, nr, nw));
            let prm = RequantParams {
                n: 0,
                sx,
                sg,
                nr: nr as u32,
                nw: nw as u32,
                w0: w0 as u32,
                xc0: xc0 as u32,
                cols: cols as u32,
                wpr: wpr as u32,
                sc: sw,
                count: 0,
                eps: 0,
            };
            let groups = b.ctx.grid((nr * nw).div_ceil(256) as u32);
            b.ctx.dispatch(&codes, &prm, &[vx, vw, vg], groups);
            w0 += nw;
        }
        r0 += nr;
    }
}

/// Every kernel this module can build (see `crate::variants`).
#[cfg(test)]
pub(crate) fn variants() -> Vec<crate::variants::Variant> {
    use crate::variants::Variant;
    use std::mem::size_of;
    let mut v = vec![Variant::new(
        "ternary/rowmax",
        shader(QUANT, &["ROWMAX"], &[]),
        size_of::<QuantParams>(),
    )];
    for kind in ["XQ", "FQ"] {
        for mode in ["FUSED", "SPLIT"] {
            v.push(Variant::new(
                &format!("ternary/quant/{kind}/{mode}"),
                shader(QUANT, &["QUANT", kind, mode], &[]),
                size_of::<QuantParams>(),
            ));
        }
    }
    for nr in [1, 2, 4, 8] {
        let p = size_of::<ProductParams>();
        v.push(Variant::new(
            &format!("ternary/mv/{nr}"),
            mv_shader(nr, false),
            p,
        ));
        v.push(Variant::new(
            &format!("ternary/mv/fused/{nr}"),
            mv_shader(nr, true),
            p,
        ));
    }
    for tm in [2, 4] {
        v.push(Variant::new(
            &format!("ternary/mm/{tm}"),
            mm_source(tm),
            size_of::<ProductParams>(),
        ));
    }
    for f16 in [false, true] {
        for dir in ["FWD", "BWD"] {
            let key = format!("ternary/float/{}", dir.to_lowercase());
            let code = shader(FLOAT, &[dir], &float_subs(f16));
            v.push(Variant::new(&key, code, size_of::<FloatParams>()).f16(f16));
        }
    }
    let p = size_of::<FloatParams>();
    v.push(Variant::new("ternary/float/bwd128", bwd_source(&[]), p));
    v.push(Variant::new(
        "ternary/float/bwd128/split",
        bwd_source(&["SPLIT"]),
        p,
    ));
    v.push(Variant::new(
        "ternary/float/bwd128/sumk",
        shader(FLOAT_SUMK, &[], &[]),
        p,
    ));
    for (name, wgs) in [("CLEAR", 256), ("SUM", 256), ("FINAL", 1), ("CODES", 256)] {
        v.push(Variant::new(
            &format!("ternary/requant/{name}"),
            requant_source(name, wgs),
            size_of::<RequantParams>(),
        ));
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::WgpuOptions;
    use tern_backend::conformance::Rng;
    use tern_backend::{Backend, Cpu, TernaryCodes};

    fn gpu(max_binding: Option<u64>) -> Option<Wgpu> {
        crate::test_device(WgpuOptions {
            max_binding,
            ..Default::default()
        })
    }

    fn same(a: f32, b: f32) -> bool {
        a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
    }

    #[track_caller]
    fn assert_bits(what: &str, got: &[f32], want: &[f32]) {
        assert_eq!(got.len(), want.len(), "{what}: length");
        for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
            assert!(
                same(g, w) || (g == 0.0 && w == 0.0),
                "{what}: index {i}: got {g:e} ({:#010x}), want {w:e} ({:#010x})",
                g.to_bits(),
                w.to_bits()
            );
        }
    }

    const DIV_TEST: &str = "//#include exact
struct P { n: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> a: array<u32>;
@group(0) @binding(2) var<storage, read> d: array<u32>;
@group(0) @binding(3) var<storage, read_write> o: array<u32>;
@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.y * nwg.x * 256u + gid.x;
    if (i >= p.n) { return; }
    o[i] = bitcast<u32>(fdiv(bitcast<f32>(a[i]), bitcast<f32>(d[i])));
    o[p.n + i] = bitcast<u32>(exact_i2f(bitcast<i32>(a[i])));
}
";

    #[test]
    fn exact_division_and_conversion() {
        let Some(b) = gpu(None) else { return };
        let mut rng = Rng::new(11);
        let specials = [
            0u32,
            0x8000_0000,
            1,
            0x8000_0001,
            0x007f_ffff,
            0x0080_0000,
            0x3f80_0000,
            0xbf80_0000,
            0x7f7f_ffff,
            0x7f80_0000,
            0xff80_0000,
            0x7fc0_0000,
            0x7f80_0001,
            0x42fe_0000,
            0x3727_c5ac,
            0x4b00_0000,
            0x4b80_0000,
            0x0000_0003,
            0x3400_0000,
        ];
        let (mut xs, mut ds) = (Vec::new(), Vec::new());
        for &x in &specials {
            for &d in &specials {
                xs.push(x);
                ds.push(d);
            }
        }
        while xs.len() < 1 << 20 {
            let r = rng.next_u64();
            let (x, mut d) = (r as u32, (r >> 32) as u32);
            match xs.len() % 4 {
                // exponents close together (quotients near 1, ties)
                0 => d = (d & 0x807f_ffff) | (x & 0x7f80_0000),
                // subnormal quotients
                1 => {
                    d = (d & 0x807f_ffff)
                        | ((x & 0x7f80_0000).wrapping_add(0x3e80_0000) & 0x7f80_0000)
                }
                // small integers (the matmul's exact products) over scales
                2 => {
                    let v = (x % 20001) as f32 - 10000.0;
                    xs.push(v.to_bits());
                    ds.push(d & 0x3fff_ffff);
                    continue;
                }
                _ => {}
            }
            xs.push(x);
            ds.push(d);
        }
        let n = xs.len();
        let a = b.upload_ids(&xs).unwrap();
        let d = b.upload_ids(&ds).unwrap();
        let o = b.new_ids("out", 2 * n).unwrap();
        let pipe = b
            .ctx
            .pipeline("test/fdiv", || preprocess(DIV_TEST, &[], &[]));
        let (va, _) = b.ctx.view(&a.buf, 0, n);
        let (vd, _) = b.ctx.view(&d.buf, 0, n);
        let (vo, _) = b.ctx.view(&o.buf, 0, 2 * n);
        let groups = b.ctx.grid((n as u32).div_ceil(256));
        b.ctx.dispatch(&pipe, &(n as u32), &[va, vd, vo], groups);
        let got: Vec<u32> =
            bytemuck::pod_collect_to_vec(&b.ctx.read_bytes(&o.buf, 0, 8 * n as u64).unwrap());
        for i in 0..n {
            let (x, y) = (f32::from_bits(xs[i]), f32::from_bits(ds[i]));
            let want = x / y;
            let g = f32::from_bits(got[i]);
            assert!(
                same(g, want),
                "{x:e} / {y:e} ({:#010x} / {:#010x}): got {g:e} ({:#010x}), want {want:e} ({:#010x})",
                xs[i],
                ds[i],
                got[i],
                want.to_bits()
            );
            let want = xs[i] as i32 as f32;
            assert_eq!(got[n + i], want.to_bits(), "i2f({})", xs[i] as i32);
        }
    }

    fn rand_x(rng: &mut Rng, rows: usize, cols: usize, specials: bool) -> Vec<f32> {
        let mut x = rng.vec(rows * cols, -3.0, 3.0);
        if specials && rows >= 6 {
            // a zero row, a NaN row, an infinite row, a huge row, a tiny row
            x[cols..2 * cols].fill(0.0);
            x[2 * cols + cols / 2] = f32::NAN;
            x[3 * cols + 1] = f32::NEG_INFINITY;
            for v in &mut x[4 * cols..5 * cols] {
                *v *= 1e37;
            }
            for v in &mut x[5 * cols..6 * cols] {
                *v *= 1e-39;
            }
        }
        x
    }

    fn check_matmul(b: &Wgpu, cpu: &Cpu, rng: &mut Rng, out: usize, cols: usize, rows: usize) {
        let codes = rng.codes(out * cols, 0.3);
        let src = TernaryCodes {
            rows: out,
            cols,
            codes: &codes,
            scale: rng.uniform(0.01, 2.0),
        };
        let w = b.upload_ternary(&src).unwrap();
        let wc = cpu.upload_ternary(&src).unwrap();
        let x = rand_x(rng, rows, cols, true);
        let what = format!("[{rows} x {cols}] -> {out}");

        let mut y = b.upload(&vec![f32::NAN; rows * out]).unwrap();
        b.ternary_matmul(&w, &b.upload(&x).unwrap(), &mut y, rows);
        let mut yc = vec![0.0; rows * out];
        cpu.ternary_matmul(&wc, &x, &mut yc, rows);
        assert_bits(
            &format!("ternary_matmul {what}"),
            &b.download(&y).unwrap(),
            &yc,
        );

        // float paths: no specials, tolerance against the CPU
        let x = rand_x(rng, rows, cols, false);
        let mut y = b.upload(&vec![f32::NAN; rows * out]).unwrap();
        b.ternary_matmul_float(&w, &b.upload(&x).unwrap(), &mut y, rows);
        cpu.ternary_matmul_float(&wc, &x, &mut yc, rows);
        let tol = 1e-5 * 3.0 * src.scale * cols as f32;
        for (i, (g, c)) in b.download(&y).unwrap().iter().zip(&yc).enumerate() {
            assert!(
                (g - c).abs() <= tol,
                "ternary_matmul_float {what}: {i}: {g} vs {c}"
            );
        }
        let dy = rng.vec(rows * out, -1.0, 1.0);
        let mut dx = b.upload(&vec![f32::NAN; rows * cols]).unwrap();
        b.ternary_matmul_backward(&w, &b.upload(&dy).unwrap(), &mut dx, rows);
        let mut dxc = vec![0.0; rows * cols];
        cpu.ternary_matmul_backward(&wc, &dy, &mut dxc, rows);
        let tol = 1e-5 * src.scale * out as f32;
        for (i, (g, c)) in b.download(&dx).unwrap().iter().zip(&dxc).enumerate() {
            assert!(
                (g - c).abs() <= tol,
                "ternary_matmul_backward {what}: {i}: {g} vs {c}"
            );
        }
    }

    #[test]
    fn products_match_cpu() {
        let cpu = Cpu::new();
        for mb in [None, Some(4096), Some(40 << 10)] {
            let Some(b) = gpu(mb) else { return };
            let mut rng = Rng::new(21);
            for &(out, cols, rows) in &[
                (70usize, 2560usize, 1usize),
                (33, 700, 3),
                (9, 64, 8),
                (150, 300, 130),
                (65, 1000, 65),
                (200, 129, 9),
                (3, 5000, 12),
                (5, 5000, 2),
            ] {
                check_matmul(&b, &cpu, &mut rng, out, cols, rows);
            }
            if mb.is_none() {
                // enough tiles for the 64-row tiles of the integer product
                check_matmul(&b, &cpu, &mut rng, 5600, 40, 130);
            }
        }
    }

    #[test]
    fn fake_quant_matches_cpu() {
        let cpu = Cpu::new();
        for mb in [None, Some(4096)] {
            let Some(b) = gpu(mb) else { return };
            let mut rng = Rng::new(22);
            for &(rows, cols) in &[(7usize, 3usize), (9, 2000), (70, 130)] {
                let x = rand_x(&mut rng, rows, cols, true);
                let mut y = b.zeros(rows * cols).unwrap();
                b.fake_quant_act(&b.upload(&x).unwrap(), &mut y, rows, cols);
                let mut yc = vec![0.0; rows * cols];
                cpu.fake_quant_act(&x, &mut yc, rows, cols);
                assert_bits(
                    &format!("fake_quant_act [{rows}, {cols}]"),
                    &b.download(&y).unwrap(),
                    &yc,
                );
            }
        }
    }

    /// |W| summed exactly (fixed point over the whole f32 range), rounded to
    /// f32 half to even.
    fn exact_abs_sum(w: &[f32]) -> f32 {
        if w.iter().any(|v| v.is_nan()) {
            return f32::NAN;
        }
        if w.iter().any(|v| v.is_infinite()) {
            return f32::INFINITY;
        }
        let mut limbs = [0u64; 12]; // 32-bit limbs in u64 for carries
        for &v in w {
            let b = v.to_bits() & 0x7fff_ffff;
            let e = b >> 23;
            let m = (b & 0x7f_ffff) as u64 | if e > 0 { 0x80_0000 } else { 0 };
            let pos = e.max(1) - 1;
            let wide = m << (pos % 32);
            let l = (pos / 32) as usize;
            limbs[l] += wide & 0xffff_ffff;
            limbs[l + 1] += wide >> 32;
            for i in 0..11 {
                let c = limbs[i] >> 32;
                limbs[i] &= 0xffff_ffff;
                limbs[i + 1] += c;
            }
        }
        // to f64 pieces is not exact; round by hand
        let top = match (0..12).rev().find(|&i| limbs[i] != 0) {
            Some(t) => t,
            None => return 0.0,
        };
        let lead = top as u32 * 32 + 63 - limbs[top].leading_zeros();
        if lead <= 23 {
            return f32::from_bits(limbs[0] as u32);
        }
        let bit = |p: u32| (limbs[(p / 32) as usize] >> (p % 32)) & 1;
        let shift = lead - 23;
        let mut m = 0u32;
        for i in 0..24 {
            m |= (bit(shift + i) as u32) << i;
        }
        let below = (0..shift - 1).any(|p| bit(p) == 1);
        if bit(shift - 1) == 1 && (below || m & 1 == 1) {
            m += 1;
        }
        f32::from_bits(((shift << 23) + m).min(0x7f80_0000))
    }

    fn read_codes(b: &Wgpu, w: &WTernary) -> Vec<i8> {
        let words: Vec<u32> =
            bytemuck::pod_collect_to_vec(&b.ctx.read_bytes(&w.codes, 0, w.codes.size()).unwrap());
        let mut out = Vec::new();
        for r in 0..w.rows {
            for c in 0..w.cols {
                let word = words[r * w.wpr + c / 16];
                let j = c % 16;
                out.push(((word >> (8 * (j % 4) + 2 * (j / 4))) & 3) as i8 - 1);
            }
        }
        out
    }

    #[test]
    fn requantize_matches_reference() {
        for mb in [None, Some(4096)] {
            let Some(b) = gpu(mb) else { return };
            let mut rng = Rng::new(23);
            let mut cases: Vec<(usize, usize, Vec<f32>)> = Vec::new();
            // realistic weights over several windows and workgroups
            cases.push((40, 1100, rng.vec(40 * 1100, -0.05, 0.05)));
            // exponents over the whole f32 range (and subnormals)
            let wide: Vec<f32> = (0..3000)
                .map(|i| {
                    let e = (rng.next_u64() % 254) as u32;
                    let v = f32::from_bits((e << 23) | (rng.next_u64() as u32 & 0x7f_ffff));
                    if i % 7 == 0 {
                        -v * 1e-30
                    } else {
                        v * 1e-20
                    }
                })
                .collect();
            cases.push((3, 1000, wide));
            // exact ties of the f32 rounding of the sum
            let mut tie = vec![0f32; 64];
            tie[0] = 1.0;
            tie[1] = 2f32.powi(-24);
            cases.push((2, 32, tie.clone()));
            tie[2] = 2f32.powi(-100);
            cases.push((2, 32, tie));
            // specials
            let mut sp = rng.vec(4 * 50, -1.0, 1.0);
            sp[17] = f32::INFINITY;
            cases.push((4, 50, sp.clone()));
            sp[33] = f32::NAN;
            cases.push((4, 50, sp));
            cases.push((5, 7, vec![f32::MAX; 35]));
            for (rows, cols, latent) in cases {
                let mut w = b
                    .upload_ternary(&TernaryCodes {
                        rows,
                        cols,
                        codes: rng.codes(rows * cols, 0.2),
                        scale: 3.0,
                    })
                    .unwrap();
                b.requantize_ternary(&b.upload(&latent).unwrap(), &mut w);
                let sum = exact_abs_sum(&latent);
                let mean = sum / (latent.len() as f32);
                let s = 1.0 / if mean < 1e-5 { 1e-5 } else { mean };
                let scale = 1.0 / s;
                let codes: Vec<i8> = latent
                    .iter()
                    .map(|&v| (v * s).round_ties_even().clamp(-1.0, 1.0) as i8)
                    .collect();
                let got_scale: Vec<f32> =
                    bytemuck::pod_collect_to_vec(&b.ctx.read_bytes(&w.scale, 0, 4).unwrap());
                let what = format!("requantize [{rows}, {cols}] sum {sum:e}");

                assert!(
                    same(got_scale[0], scale),
                    "{what}: scale {} vs {scale}",
                    got_scale[0]
                );
                assert_eq!(read_codes(&b, &w), codes, "{what}: codes");
                if latent.iter().all(|v| v.is_finite()) && sum.is_finite() && latent.len() > 100 {
                    // realistic data: the CPU's f64 sum agrees
                    let mut cc = vec![0i8; latent.len()];
                    let cs = tern_tensor::quant::absmean_ternary(&latent, &mut cc);
                    if rows == 40 {
                        assert_eq!(cs.to_bits(), scale.to_bits(), "{what}: cpu scale");
                    }
                }
            }
        }
    }
}
