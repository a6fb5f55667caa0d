//! The shape checks of the [`Backend`](crate::Backend) contract, shared by
//! every implementation so that all of them refuse the same calls with the
//! same message. Shapes come from the model code, never from user input, so
//! a failed check is a bug in the caller: the checks panic, naming the
//! backend (`cpu`, `wgpu`), the op and the operand.

use crate::{AdamW, AttnDims, BackendError, Gemm, TernarySource};

/// Panics unless `got == want`: `"{backend} {op}: {what} has length {got},
/// expected {want}"`.
#[track_caller]
pub fn len(backend: &str, op: &str, what: &str, got: usize, want: usize) {
    assert_eq!(
        got, want,
        "{backend} {op}: {what} has length {got}, expected {want}"
    );
}

impl AttnDims {
    /// Elements of `q` and `out`: `[batch, n_new, n_heads, head_dim]`.
    pub fn q_len(&self) -> usize {
        self.batch * self.n_new * self.n_heads * self.head_dim
    }

    /// Elements of `k` and `v`: `[batch, kv_len, n_kv_heads, head_dim]`.
    pub fn k_len(&self) -> usize {
        self.batch * self.kv_len * self.n_kv_heads * self.head_dim
    }

    /// Elements of `lse`: `[batch, n_heads, n_new]`.
    pub fn lse_len(&self) -> usize {
        self.batch * self.n_heads * self.n_new
    }

    /// The checks of [`Backend::attention`](crate::Backend::attention): the
    /// head counts, the cache range and every buffer length.
    #[track_caller]
    pub fn check(&self, backend: &str, q: usize, k: usize, v: usize, out: usize, lse: usize) {
        assert!(
            self.n_kv_heads > 0 && self.n_heads % self.n_kv_heads == 0,
            "{backend} attention: n_heads {} is not a multiple of n_kv_heads {}",
            self.n_heads,
            self.n_kv_heads
        );
        assert!(
            self.n_past + self.n_new <= self.kv_len,
            "{backend} attention: n_past {} + n_new {} exceeds kv_len {}",
            self.n_past,
            self.n_new,
            self.kv_len
        );
        let (nq, nk) = (self.q_len(), self.k_len());
        len(backend, "attention", "q", q, nq);
        len(backend, "attention", "k", k, nk);
        len(backend, "attention", "v", v, nk);
        len(backend, "attention", "out", out, nq);
        len(backend, "attention", "lse", lse, self.lse_len());
    }

    /// The checks of
    /// [`Backend::attention_backward`](crate::Backend::attention_backward):
    /// those of the forward, no cache (`n_past = 0`, `kv_len = n_new`), and
    /// the gradients' lengths.
    #[allow(clippy::too_many_arguments)]
    #[track_caller]
    pub fn check_backward(
        &self,
        backend: &str,
        [q, k, v, out, lse]: [usize; 5],
        dout: usize,
        dq: usize,
        dk: usize,
        dv: usize,
    ) {
        self.check(backend, q, k, v, out, lse);
        assert!(
            self.n_past == 0 && self.kv_len == self.n_new,
            "{backend} attention_backward: needs n_past = 0 and kv_len = n_new (got {} and {} vs {})",
            self.n_past,
            self.kv_len,
            self.n_new
        );
        len(backend, "attention_backward", "dout", dout, q);
        len(backend, "attention_backward", "dq", dq, q);
        len(backend, "attention_backward", "dk", dk, k);
        len(backend, "attention_backward", "dv", dv, v);
    }
}

impl Gemm {
    /// The checks of [`Backend::matmul`](crate::Backend::matmul): `a` is
    /// `m * k` long, `b` `k * n`, `c` `m * n`.
    #[track_caller]
    pub fn check(&self, backend: &str, a: usize, b: usize, c: usize) {
        self.check_op(backend, "matmul", a, b, c);
    }

    /// [`Gemm::check`] for another product op (`matmul_half`), named in
    /// the message.
    #[track_caller]
    pub fn check_op(&self, backend: &str, op: &str, a: usize, b: usize, c: usize) {
        len(backend, op, "a", a, self.m * self.k);
        len(backend, op, "b", b, self.k * self.n);
        len(backend, op, "c", c, self.m * self.n);
    }
}

impl AdamW {
    /// The checks of [`Backend::adamw`](crate::Backend::adamw): the step
    /// counts from 1 and `g`, `m`, `v` are as long as `p`.
    #[track_caller]
    pub fn check(&self, backend: &str, p: usize, g: usize, m: usize, v: usize) {
        len(backend, "adamw", "g", g, p);
        len(backend, "adamw", "m", m, p);
        len(backend, "adamw", "v", v, p);
        assert!(self.step >= 1, "{backend} adamw: step counts from 1");
    }
}

/// The checks of the ternary products ([`Backend::ternary_matmul`],
/// `ternary_matmul_float`, `ternary_matmul_backward`) for a `[out, cols]`
/// matrix: the input is `rows * input_cols` long, the output
/// `rows * output_cols`, where the forward reads `cols` and writes `out`
/// and the backward the reverse.
///
/// [`Backend::ternary_matmul`]: crate::Backend::ternary_matmul
#[track_caller]
pub fn ternary(
    backend: &str,
    op: &str,
    (out, cols): (usize, usize),
    (input, output): (usize, usize),
    rows: usize,
) {
    let backward = op == "ternary_matmul_backward";
    let (i, o) = if backward { (out, cols) } else { (cols, out) };
    let (ni, no) = if backward { ("dy", "dx") } else { ("x", "y") };
    len(backend, op, ni, input, rows * i);
    len(backend, op, no, output, rows * o);
}

/// The checks of [`Backend::rmsnorm`](crate::Backend::rmsnorm): `x` and `y`
/// are `[rows, dim]`, `w` is `dim` long, `rstd` `rows`.
#[track_caller]
pub fn rmsnorm(backend: &str, [x, w, y, rstd]: [usize; 4], rows: usize, dim: usize) {
    let op = "rmsnorm";
    len(backend, op, "x", x, rows * dim);
    len(backend, op, "w", w, dim);
    len(backend, op, "y", y, rows * dim);
    len(backend, op, "rstd", rstd, rows);
}

/// The checks of
/// [`Backend::rmsnorm_backward`](crate::Backend::rmsnorm_backward): those of
/// the forward for `x`, `w`, `rstd`, then `dy` and `dx` as `x`, and `dw`
/// (when asked for) as `w`.
#[track_caller]
pub fn rmsnorm_backward(
    backend: &str,
    [x, w, rstd, dy, dx]: [usize; 5],
    dw: Option<usize>,
    rows: usize,
    dim: usize,
) {
    let op = "rmsnorm_backward";
    len(backend, op, "x", x, rows * dim);
    len(backend, op, "w", w, dim);
    len(backend, op, "rstd", rstd, rows);
    len(backend, op, "dy", dy, rows * dim);
    len(backend, op, "dx", dx, rows * dim);
    if let Some(dw) = dw {
        len(backend, op, "dw", dw, dim);
    }
}

/// The checks of an op whose operands are all as long as the first:
/// `names[i]` must be `lens[0]` long (`copy`, `axpy`, `dropout`, `gate`
/// with `[g, u, y]`, `gate_backward` with `[g, u, dy, dg, du]`).
#[track_caller]
pub fn same_len(backend: &str, op: &str, names: &[&str], lens: &[usize]) {
    for (name, &n) in names.iter().zip(lens).skip(1) {
        len(backend, op, name, n, lens[0]);
    }
}

/// The checks of [`Backend::dropout`](crate::Backend::dropout): `y` as long
/// as `x`, `0 <= p < 1`.
#[track_caller]
pub fn dropout(backend: &str, x: usize, y: usize, p: f32) {
    same_len(backend, "dropout", &["x", "y"], &[x, y]);
    assert!((0.0..1.0).contains(&p), "{backend} dropout: p = {p}");
}

/// The checks of [`Backend::copy_range`](crate::Backend::copy_range): both
/// ranges inside their buffers.
#[track_caller]
pub fn copy_range(
    backend: &str,
    (src, src_off): (usize, usize),
    (dst, dst_off): (usize, usize),
    n: usize,
) {
    assert!(
        src_off + n <= src && dst_off + n <= dst,
        "{backend} copy_range: {n} values from {src_off} (of {src}) to {dst_off} (of {dst})"
    );
}

/// The check of [`Backend::sum_squares`](crate::Backend::sum_squares): the
/// slot is inside `out`.
#[track_caller]
pub fn sum_squares(backend: &str, out: usize, index: usize) {
    assert!(index < out, "{backend} sum_squares: index {index} of {out}");
}

/// The checks of [`Backend::fake_quant_act`](crate::Backend::fake_quant_act):
/// `x` and `y` are `[rows, cols]`, and rows have at least one column.
#[track_caller]
pub fn fake_quant_act(backend: &str, x: usize, y: usize, rows: usize, cols: usize) {
    len(backend, "fake_quant_act", "x", x, rows * cols);
    len(backend, "fake_quant_act", "y", y, rows * cols);
    assert!(
        rows == 0 || cols > 0,
        "{backend} fake_quant_act: cols must be > 0"
    );
}

/// The check of
/// [`Backend::requantize_ternary`](crate::Backend::requantize_ternary): the
/// latent weights have the matrix's `rows * cols` elements.
#[track_caller]
pub fn requantize_ternary(backend: &str, latent: usize, (rows, cols): (usize, usize)) {
    len(backend, "requantize_ternary", "latent", latent, rows * cols);
}

/// The checks of [`Backend::rope`](crate::Backend::rope): `x` is `[rows,
/// n_heads, head_dim]`, `pos` `rows` long, and head_dim even (pairs).
#[track_caller]
pub fn rope(backend: &str, x: usize, pos: usize, rows: usize, n_heads: usize, head_dim: usize) {
    len(backend, "rope", "x", x, rows * n_heads * head_dim);
    len(backend, "rope", "pos", pos, rows);
    assert!(
        head_dim % 2 == 0,
        "{backend} rope: head_dim {head_dim} must be even"
    );
}

/// The checks of [`Backend::embedding`](crate::Backend::embedding) and
/// [`Backend::embedding_half`](crate::Backend::embedding_half) (`rows`:
/// `y`) and
/// [`Backend::embedding_backward`](crate::Backend::embedding_backward)
/// (`rows`: `dy`, `table`: `dtable`): the rows are `[ids, dim]` and the
/// table whole rows of `dim > 0`. Returns the vocabulary size.
#[track_caller]
pub fn embedding(backend: &str, op: &str, [table, ids, rows]: [usize; 3], dim: usize) -> usize {
    let (t, r) = if op == "embedding_backward" {
        ("dtable", "dy")
    } else {
        ("table", "y")
    };
    len(backend, op, r, rows, ids * dim);
    assert!(
        dim > 0 && table % dim == 0,
        "{backend} {op}: {t} length {table} vs dim {dim}"
    );
    table / dim
}

/// The checks of [`Backend::cross_entropy`](crate::Backend::cross_entropy):
/// `logits` (and `dlogits`, when asked for) are `[rows, vocab]`, `targets`
/// and `loss` `rows` long, and a vocabulary of at least one entry when there
/// are rows.
#[track_caller]
pub fn cross_entropy(
    backend: &str,
    [logits, targets, loss]: [usize; 3],
    dlogits: Option<usize>,
    rows: usize,
    vocab: usize,
) {
    let op = "cross_entropy";
    len(backend, op, "logits", logits, rows * vocab);
    len(backend, op, "targets", targets, rows);
    len(backend, op, "loss", loss, rows);
    if let Some(dl) = dlogits {
        len(backend, op, "dlogits", dl, rows * vocab);
    }
    assert!(
        rows == 0 || vocab > 0,
        "{backend} cross_entropy: vocab must be > 0"
    );
}

/// The checks of [`Backend::upload_ternary`] before any row is read: at
/// least one column and a finite scale. The error names the backend and the
/// matrix's shape.
///
/// [`Backend::upload_ternary`]: crate::Backend::upload_ternary
pub fn ternary_source(backend: &str, w: &dyn TernarySource) -> Result<(), BackendError> {
    if w.cols() == 0 {
        return Err(invalid_ternary(backend, w, "cols must be > 0".into()));
    }
    let scale = w.scale();
    if !scale.is_finite() {
        return Err(invalid_ternary(
            backend,
            w,
            format!("scale {scale} is not finite"),
        ));
    }
    Ok(())
}

/// The check of each row an upload reads: every code is -1, 0 or 1.
pub fn ternary_row(
    backend: &str,
    w: &dyn TernarySource,
    r: usize,
    codes: &[i8],
) -> Result<(), BackendError> {
    match codes.iter().position(|&c| !(-1..=1).contains(&c)) {
        None => Ok(()),
        Some(c) => Err(invalid_ternary(
            backend,
            w,
            format!(
                "row {r} column {c} holds code {}, expected -1, 0 or 1",
                codes[c]
            ),
        )),
    }
}

fn invalid_ternary(backend: &str, w: &dyn TernarySource, reason: String) -> BackendError {
    BackendError::InvalidTernary {
        backend: backend.into(),
        what: format!("[{}, {}] matrix", w.rows(), w.cols()),
        reason,
    }
}

/// The checks of [`Backend::argmax`](crate::Backend::argmax): `x` is
/// `[rows, cols]` with `cols > 0`, `out` holds `rows` ids, and the history
/// `rows` ids from `at`.
#[track_caller]
pub fn argmax(
    backend: &str,
    x: usize,
    rows: usize,
    cols: usize,
    out: usize,
    hist: Option<(usize, usize)>,
) {
    len(backend, "argmax", "x", x, rows * cols);
    assert!(cols > 0, "{backend} argmax: rows of 0 columns");
    len(backend, "argmax", "out", out, rows);
    if let Some((h, at)) = hist {
        assert!(
            at + rows <= h,
            "{backend} argmax: {rows} ids at {at} overrun the history of {h}"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dims() -> AttnDims {
        AttnDims {
            batch: 2,
            n_new: 3,
            n_past: 1,
            kv_len: 5,
            n_heads: 4,
            n_kv_heads: 2,
            head_dim: 8,
        }
    }

    #[test]
    fn attention_lengths() {
        let d = dims();
        assert_eq!((d.q_len(), d.k_len(), d.lse_len()), (192, 160, 24));
        d.check("test", 192, 160, 160, 192, 24);
    }

    #[test]
    #[should_panic(expected = "test attention: k has length 159, expected 160")]
    fn a_short_key_buffer_is_refused() {
        dims().check("test", 192, 159, 160, 192, 24);
    }

    #[test]
    #[should_panic(expected = "test attention: n_heads 4 is not a multiple of n_kv_heads 3")]
    fn heads_must_group() {
        let d = AttnDims {
            n_kv_heads: 3,
            ..dims()
        };
        d.check("test", 0, 0, 0, 0, 0);
    }

    #[test]
    #[should_panic(expected = "test attention_backward: needs n_past = 0")]
    fn the_backward_has_no_cache() {
        let d = dims();
        d.check_backward("test", [192, 160, 160, 192, 24], 192, 192, 160, 160);
    }

    #[test]
    #[should_panic(expected = "test matmul: b has length 11, expected 12")]
    fn gemm_operands() {
        Gemm::new(2, 3, 4).check("test", 6, 11, 8);
    }

    #[test]
    #[should_panic(expected = "test matmul_half: b has length 11, expected 12")]
    fn half_gemm_operands_name_the_op() {
        Gemm::new(2, 3, 4).check_op("test", "matmul_half", 6, 11, 8);
    }

    #[test]
    #[should_panic(expected = "test embedding_half: table length 10 vs dim 3")]
    fn a_half_table_of_partial_rows_is_refused() {
        embedding("test", "embedding_half", [10, 2, 6], 3);
    }

    #[test]
    #[should_panic(expected = "test ternary_matmul_backward: dx has length 5, expected 6")]
    fn the_backward_product_reads_dy_and_writes_dx() {
        // [out 4, cols 3], 2 rows: dy is 8 long, dx 6
        ternary("test", "ternary_matmul_backward", (4, 3), (8, 5), 2);
    }
}
