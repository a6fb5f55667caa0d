//! A custom backend: a decorator over any [`Backend`] that counts the ops
//! it is asked to run and delegates every one of them. A new implementation
//! (another GPU API, a remote device, a tracer) has the same shape: the
//! associated buffer types, the memory calls and the op set.
//!
//! `cargo run --example custom_backend -p tern-backend` runs a few ops and a
//! handful of conformance checks through it and prints the counts; the whole
//! conformance suite runs on it in `tests/custom_backend.rs`
//! (`conformance_tests!(Counting::new(Cpu::new()))`), the way every backend
//! proves that it honours the contract.

use std::collections::BTreeMap;
use std::sync::Mutex;

use tern_backend::{Activation, AdamW, AttnDims, Backend, BackendError, Cpu, Gemm, TernarySource};

/// `B` with a count per op name.
pub struct Counting<B> {
    inner: B,
    counts: Mutex<BTreeMap<&'static str, u64>>,
}

impl<B: Backend> Counting<B> {
    pub fn new(inner: B) -> Self {
        Counting {
            inner,
            counts: Mutex::new(BTreeMap::new()),
        }
    }

    fn count(&self, op: &'static str) {
        *self
            .counts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(op)
            .or_default() += 1;
    }

    /// How often each op ran.
    pub fn counts(&self) -> BTreeMap<&'static str, u64> {
        self.counts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl<B: Backend> Backend for Counting<B> {
    type Buf = B::Buf;
    type Ids = B::Ids;
    type Ternary = B::Ternary;
    type Half = B::Half;

    fn name(&self) -> String {
        format!("counting over {}", self.inner.name())
    }
    fn device_memory(&self) -> Option<(u64, u64)> {
        self.inner.device_memory()
    }
    fn synchronize(&self) -> Result<(), BackendError> {
        self.inner.synchronize()
    }

    fn zeros(&self, len: usize) -> Result<B::Buf, BackendError> {
        self.inner.zeros(len)
    }
    fn alloc(&self, len: usize) -> Result<B::Buf, BackendError> {
        self.inner.alloc(len)
    }
    fn upload(&self, data: &[f32]) -> Result<B::Buf, BackendError> {
        self.inner.upload(data)
    }
    fn upload_ids(&self, data: &[u32]) -> Result<B::Ids, BackendError> {
        self.inner.upload_ids(data)
    }
    fn upload_ternary(&self, w: &dyn TernarySource) -> Result<B::Ternary, BackendError> {
        self.inner.upload_ternary(w)
    }
    fn write(&self, buf: &mut B::Buf, offset: usize, data: &[f32]) {
        self.inner.write(buf, offset, data)
    }
    fn write_ids(&self, buf: &mut B::Ids, data: &[u32]) {
        self.inner.write_ids(buf, data)
    }
    fn download(&self, buf: &B::Buf) -> Result<Vec<f32>, BackendError> {
        self.inner.download(buf)
    }
    fn download_ids(&self, ids: &B::Ids) -> Result<Vec<u32>, BackendError> {
        self.inner.download_ids(ids)
    }
    fn len(&self, buf: &B::Buf) -> usize {
        self.inner.len(buf)
    }
    fn ternary_bytes(&self, w: &B::Ternary) -> u64 {
        self.inner.ternary_bytes(w)
    }
    fn ternary_shape(&self, w: &B::Ternary) -> (usize, usize) {
        self.inner.ternary_shape(w)
    }
    fn upload_half(&self, data: &[f32]) -> Result<B::Half, BackendError> {
        self.inner.upload_half(data)
    }
    fn half_len(&self, h: &B::Half) -> usize {
        self.inner.half_len(h)
    }

    fn ternary_matmul(&self, w: &B::Ternary, x: &B::Buf, y: &mut B::Buf, rows: usize) {
        self.count("ternary_matmul");
        self.inner.ternary_matmul(w, x, y, rows)
    }
    fn ternary_matmul_float(&self, w: &B::Ternary, x: &B::Buf, y: &mut B::Buf, rows: usize) {
        self.count("ternary_matmul_float");
        self.inner.ternary_matmul_float(w, x, y, rows)
    }
    fn ternary_matmul_backward(&self, w: &B::Ternary, dy: &B::Buf, dx: &mut B::Buf, rows: usize) {
        self.count("ternary_matmul_backward");
        self.inner.ternary_matmul_backward(w, dy, dx, rows)
    }
    fn requantize_ternary(&self, latent: &B::Buf, w: &mut B::Ternary) {
        self.count("requantize_ternary");
        self.inner.requantize_ternary(latent, w)
    }
    fn fake_quant_act(&self, x: &B::Buf, y: &mut B::Buf, rows: usize, cols: usize) {
        self.count("fake_quant_act");
        self.inner.fake_quant_act(x, y, rows, cols)
    }

    fn matmul(&self, a: &B::Buf, b: &B::Buf, c: &mut B::Buf, g: Gemm) {
        self.count("matmul");
        self.inner.matmul(a, b, c, g)
    }
    fn copy(&self, x: &B::Buf, y: &mut B::Buf) {
        self.count("copy");
        self.inner.copy(x, y)
    }
    fn axpy(&self, alpha: f32, x: &B::Buf, y: &mut B::Buf) {
        self.count("axpy");
        self.inner.axpy(alpha, x, y)
    }
    fn scale(&self, alpha: f32, y: &mut B::Buf) {
        self.count("scale");
        self.inner.scale(alpha, y)
    }
    fn sum_squares(&self, x: &B::Buf, out: &mut B::Buf, index: usize) {
        self.count("sum_squares");
        self.inner.sum_squares(x, out, index)
    }
    fn dropout(&self, x: &B::Buf, y: &mut B::Buf, p: f32, seed: u64) {
        self.count("dropout");
        self.inner.dropout(x, y, p, seed)
    }
    fn copy_range(&self, src: &B::Buf, src_off: usize, dst: &mut B::Buf, dst_off: usize, n: usize) {
        self.count("copy_range");
        self.inner.copy_range(src, src_off, dst, dst_off, n)
    }

    fn rmsnorm(
        &self,
        x: &B::Buf,
        w: &B::Buf,
        y: &mut B::Buf,
        rstd: &mut B::Buf,
        rows: usize,
        dim: usize,
        eps: f32,
    ) {
        self.count("rmsnorm");
        self.inner.rmsnorm(x, w, y, rstd, rows, dim, eps)
    }
    fn rmsnorm_backward(
        &self,
        x: &B::Buf,
        w: &B::Buf,
        rstd: &B::Buf,
        dy: &B::Buf,
        dx: &mut B::Buf,
        dw: Option<&mut B::Buf>,
        rows: usize,
        dim: usize,
    ) {
        self.count("rmsnorm_backward");
        self.inner
            .rmsnorm_backward(x, w, rstd, dy, dx, dw, rows, dim)
    }

    fn rope(
        &self,
        x: &mut B::Buf,
        pos: &B::Ids,
        rows: usize,
        n_heads: usize,
        head_dim: usize,
        theta: f32,
        inverse: bool,
    ) {
        self.count("rope");
        self.inner
            .rope(x, pos, rows, n_heads, head_dim, theta, inverse)
    }
    fn attention(
        &self,
        q: &B::Buf,
        k: &B::Buf,
        v: &B::Buf,
        out: &mut B::Buf,
        lse: &mut B::Buf,
        d: AttnDims,
    ) {
        self.count("attention");
        self.inner.attention(q, k, v, out, lse, d)
    }
    fn attention_backward(
        &self,
        q: &B::Buf,
        k: &B::Buf,
        v: &B::Buf,
        out: &B::Buf,
        lse: &B::Buf,
        dout: &B::Buf,
        dq: &mut B::Buf,
        dk: &mut B::Buf,
        dv: &mut B::Buf,
        d: AttnDims,
    ) {
        self.count("attention_backward");
        self.inner
            .attention_backward(q, k, v, out, lse, dout, dq, dk, dv, d)
    }

    fn gate(&self, g: &B::Buf, u: &B::Buf, y: &mut B::Buf, act: Activation) {
        self.count("gate");
        self.inner.gate(g, u, y, act)
    }
    fn gate_backward(
        &self,
        g: &B::Buf,
        u: &B::Buf,
        dy: &B::Buf,
        dg: &mut B::Buf,
        du: &mut B::Buf,
        act: Activation,
    ) {
        self.count("gate_backward");
        self.inner.gate_backward(g, u, dy, dg, du, act)
    }

    fn embedding(&self, table: &B::Buf, ids: &B::Ids, y: &mut B::Buf, dim: usize) {
        self.count("embedding");
        self.inner.embedding(table, ids, y, dim)
    }
    fn embedding_backward(&self, ids: &B::Ids, dy: &B::Buf, dtable: &mut B::Buf, dim: usize) {
        self.count("embedding_backward");
        self.inner.embedding_backward(ids, dy, dtable, dim)
    }
    fn embedding_half(&self, table: &B::Half, ids: &B::Ids, y: &mut B::Buf, dim: usize) {
        self.count("embedding_half");
        self.inner.embedding_half(table, ids, y, dim)
    }
    fn matmul_half(&self, a: &B::Buf, b: &B::Half, c: &mut B::Buf, g: Gemm) {
        self.count("matmul_half");
        self.inner.matmul_half(a, b, c, g)
    }

    fn cross_entropy(
        &self,
        logits: &B::Buf,
        targets: &B::Ids,
        loss: &mut B::Buf,
        dlogits: Option<&mut B::Buf>,
        rows: usize,
        vocab: usize,
        grad_scale: f32,
    ) {
        self.count("cross_entropy");
        self.inner
            .cross_entropy(logits, targets, loss, dlogits, rows, vocab, grad_scale)
    }

    fn argmax(
        &self,
        x: &B::Buf,
        rows: usize,
        cols: usize,
        out: &mut B::Ids,
        hist: Option<(&mut B::Ids, usize)>,
    ) {
        self.count("argmax");
        self.inner.argmax(x, rows, cols, out, hist)
    }

    fn adamw(&self, p: &mut B::Buf, g: &B::Buf, m: &mut B::Buf, v: &mut B::Buf, h: AdamW) {
        self.count("adamw");
        self.inner.adamw(p, g, m, v, h)
    }
}

fn main() -> Result<(), BackendError> {
    let b = Counting::new(Cpu::new());
    // C = A B with A [2, 3], B [3, 2]: small integers, exact in f32
    let a = b.upload(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0])?;
    let m = b.upload(&[1.0, 0.0, 0.0, 1.0, 1.0, 1.0])?;
    let mut c = b.zeros(4)?;
    b.matmul(&a, &m, &mut c, Gemm::new(2, 3, 2));
    b.scale(2.0, &mut c);
    assert_eq!(b.download(&c)?, [8.0, 10.0, 20.0, 22.0]);

    // a few checks of the suite, each against its independent oracle
    tern_backend::conformance::matmul_reference(&b);
    tern_backend::conformance::attention_reference(&b);
    tern_backend::conformance::adamw_matches_pytorch(&b);

    println!("{}", b.name());
    for (op, n) in b.counts() {
        println!("{op:>20} {n}");
    }
    Ok(())
}
