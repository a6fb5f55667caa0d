//! Half-precision matrices (the embedding table and the LM head): f16 values
//! packed two per u32, low half first, widened with `unpack2x16float` (no
//! SHADER_F16 needed), f32 accumulation.
//!
//! - gather (`shaders/half_embed.wgsl`): windowed like the f32 embedding;
//! - products (`matmul_half`): cut into blocks whose operands fit one
//!   binding each (B's window measured in halves), then per block the f16
//!   matvec (`shaders/half_gemv.wgsl`: few rows of C against B stored `[n,
//!   k]`, decode's head, memory bound) or the f32 GEMM's tiled kernel with B
//!   widened as its slices are staged (`dense_gemm.wgsl`'s `HB`: prefill
//!   logits and the head's input gradient in training).

use tern_backend::{BackendError, Gemm};

use super::gemm::{block_ranges, for_blocks, tiled, Block, GemmParams, GEMV_MAX};
use crate::ctx::View;
use crate::shader::preprocess;
use crate::{Owner, WBuf, WIds, Wgpu};

pub(crate) const HALF_EMBED_SRC: &str = include_str!("../shaders/half_embed.wgsl");
pub(crate) const HALF_GEMV_SRC: &str = include_str!("../shaders/half_gemv.wgsl");

/// An f16 matrix on the device, two values per u32.
pub struct WHalf {
    pub(crate) buf: wgpu::Buffer,
    pub(crate) len: usize,
    owner: Owner,
}

impl Drop for WHalf {
    fn drop(&mut self) {
        self.owner.release(&self.buf);
    }
}

pub(crate) fn upload_half(b: &Wgpu, data: &[f32]) -> Result<WHalf, BackendError> {
    let bits = tern_backend::f16_bits(&b.ctx.name(), data)?;
    let words: Vec<u32> = bits
        .chunks(2)
        .map(|h| h[0] as u32 | (h.get(1).copied().unwrap_or(0) as u32) << 16)
        .collect();
    let (buf, _) = b.ctx.buffer("f16 matrix", words.len() as u64 * 4)?;
    b.ctx.write_bytes(&buf, 0, bytemuck::cast_slice(&words));
    Ok(WHalf {
        buf,
        len: data.len(),
        owner: b.owner(),
    })
}

/// Halves one window may cover (its words fit [`crate::ctx::Ctx::view`]
/// whatever the parity of the first half).
fn half_window(b: &Wgpu) -> usize {
    2 * (b.ctx.window_elems() - 1)
}

/// A binding over halves `[start, start + n)` of a packed f16 buffer and the
/// shift of `start` in halves from the view's first half.
fn hview<'a>(b: &Wgpu, buf: &'a wgpu::Buffer, start: usize, n: usize) -> (View<'a>, u32) {
    let words = (start % 2 + n).div_ceil(2);
    let (v, s) = b.ctx.view(buf, start / 2, words);
    (v, 2 * s + (start % 2) as u32)
}

pub(crate) fn embedding_half(b: &Wgpu, table: &WHalf, ids: &WIds, y: &mut WBuf, dim: usize) {
    let vocab = tern_backend::contract::embedding(
        "wgpu",
        "embedding_half",
        [table.len, ids.len, y.len],
        dim,
    );
    let rows = ids.len;
    if rows == 0 || vocab == 0 {
        return;
    }
    // Windows of y (f32) bound the blocks; a table block of the same shape
    // spans as many halves, well inside a window of halves.
    let pipe = b
        .ctx
        .pipeline("half/embed", || preprocess(HALF_EMBED_SRC, &[], &[]));
    super::embedding::gather(b, &pipe, ids, y, (vocab, dim), |start, n| {
        hview(b, &table.buf, start, n)
    });
}

pub(crate) fn matmul_half(b: &Wgpu, a: &WBuf, bh: &WHalf, c: &mut WBuf, g: Gemm) {
    g.check_op("wgpu", "matmul_half", a.len, bh.len, c.len);
    for_blocks(b, c, &g, half_window(b), |blk, beta| {
        block(b, a, bh, c, &g, blk, beta)
    });
}

/// One block of the product (see [`Block`]), B in f16.
fn block(b: &Wgpu, a: &WBuf, bh: &WHalf, c: &WBuf, g: &Gemm, blk: Block, beta: f32) {
    let (n, k) = (g.n, g.k);
    let ((_, ib), (_, jb), (_, pk)) = blk;
    let ((lda, a_start, a_span), (ldb, b_start, b_span), c_start) = block_ranges(g, blk);
    let (va, sa) = b.ctx.view(&a.buf, a_start, a_span);
    let (vb, sb) = hview(b, &bh.buf, b_start, b_span);
    if !(ib <= GEMV_MAX && g.trans_b && !g.trans_a) {
        let c_view = (&c.buf, c_start);
        tiled(
            b,
            g,
            (va, sa, lda),
            (vb, sb, ldb),
            c_view,
            (ib, jb, pk),
            beta,
            true,
        );
        return;
    }
    let v8 = k % 8 == 0 && pk % 8 == 0 && sa % 4 == 0 && sb % 8 == 0 && b.ctx.align % 16 == 0;
    let key = gemv_key(ib, v8);
    let pipe = b.ctx.pipeline(&key, || gemv_source(ib, v8));
    let (vc, sc) = b.ctx.view(&c.buf, c_start, (ib - 1) * n + jb);
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
        kchunk: 0,
        zs: 0,
    };
    let groups = b.ctx.grid((jb as u32).div_ceil(8));
    b.ctx.dispatch(&pipe, &words, &[va, vb, vc], groups);
}

fn gemv_key(mr: usize, v8: bool) -> String {
    format!("half/gemv/{mr}{}", if v8 { "/v8" } else { "" })
}

/// The f16 matvec for `mr` rows of C, its accumulators as named variables.
fn gemv_source(mr: usize, v8: bool) -> String {
    use std::fmt::Write;
    let (mut decl, mut acc, mut store) = (String::new(), String::new(), String::new());
    for i in 0..mr {
        let _ = writeln!(decl, "    var acc{i} = 0.0;");
        if v8 {
            let ai = format!("(p.sa + {i}u * p.lda) / 4u + 2u * q");
            let _ = writeln!(
                acc,
                "            acc{i} += dot(a[{ai}], b0) + dot(a[{ai} + 1u], b1);"
            );
        } else {
            let _ = writeln!(
                acc,
                "            acc{i} += a[p.sa + {i}u * p.lda + q] * b0;"
            );
        }
        let _ = writeln!(store, "    red[{i}u * 256u + t] = acc{i};");
    }
    let defs: &[&str] = if v8 { &["V8"] } else { &[] };
    preprocess(
        HALF_GEMV_SRC,
        defs,
        &[
            ("MR", mr.to_string()),
            ("DECL", decl),
            ("ACC", acc),
            ("STORE", store),
        ],
    )
}

/// Every kernel this module builds (see `crate::variants`): the gather and
/// the matvec for 1..=8 rows, aligned (`v8`) or not. The tiled kernels with
/// an f16 B are listed by `gemm::variants`.
#[cfg(test)]
pub(crate) fn variants() -> Vec<crate::variants::Variant> {
    use crate::variants::Variant;
    let mut v = vec![Variant::new(
        "half/embed",
        preprocess(HALF_EMBED_SRC, &[], &[]),
        std::mem::size_of::<super::embedding::EmbedParams>(),
    )];
    for mr in 1..=GEMV_MAX {
        for v8 in [false, true] {
            v.push(Variant::new(
                &gemv_key(mr, v8),
                gemv_source(mr, v8),
                std::mem::size_of::<GemmParams>(),
            ));
        }
    }
    v
}
