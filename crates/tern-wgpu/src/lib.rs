//! tern's backend on any GPU wgpu reaches (Vulkan, Metal, DX12, and Mesa's
//! lavapipe on machines without one): every [`Backend`] op as a WGSL compute
//! shader, packed ternary weights decoded in the shader, exact integer paths
//! bit-identical to the CPU backend.
//!
//! ```
//! use tern_backend::{Backend, Gemm};
//! use tern_wgpu::Wgpu;
//!
//! // The best adapter: a discrete GPU, then an integrated one, then a
//! // software one such as Mesa's lavapipe. Without any, there is nothing to
//! // run on and the error says why.
//! let gpu = match Wgpu::new() {
//!     Ok(gpu) => gpu,
//!     Err(e) => {
//!         eprintln!("no wgpu device: {e}");
//!         return Ok(());
//!     }
//! };
//! let a = gpu.upload(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0])?;
//! let b = gpu.upload(&[1.0, 0.0, 0.0, 1.0, 1.0, 1.0])?;
//! let mut c = gpu.zeros(4)?;
//! gpu.matmul(&a, &b, &mut c, Gemm::new(2, 3, 2)); // recorded, not yet run
//! assert_eq!(gpu.download(&c)?, [4.0, 5.0, 10.0, 11.0]); // submits and waits
//! # Ok::<(), tern_backend::BackendError>(())
//! ```
//!
//! Layout of the crate:
//! - `ctx`: adapter, device, buffers, pipeline cache, lazy recording,
//!   binding windows (tensors larger than one storage binding are processed
//!   window by window), error capture.
//! - `shader`: the WGSL preprocessor (`//#include` of the shared modules,
//!   `#ifdef`, `{{...}}` slots for generated code) and the bind group layout
//!   read from the module naga parses.
//! - `ops`, one module per kernel family, each with the `#[repr(C)]`
//!   parameter structs of its kernels: `basic` (memory, axpy, scale),
//!   `ternary` (BitLinear: packed codes, int8 activations, exact division;
//!   its backward, re-ternarization, fake quantization), `gemm`, `reduce`,
//!   `elementwise` (dropout, gate, AdamW), `norm`, `embedding`, `loss`,
//!   `rope`, `attention` (its code generator in `attention::codegen`),
//!   `half` (f16 matrices: the embedding table and the LM head).
//! - `shaders/`: the WGSL sources, one file per kernel family, plus the
//!   modules they include (`exact`, `attention_common`, `softmax_row`, `gemm_params`,
//!   `ternary_product_params`, `ternary_float_params`).
//! - `watchdog`: the timeout every wait on the device runs under.
//! - `variants` (tests): every kernel the crate can build, validated by naga
//!   and snapshotted (`src/snapshots/`).
//!
//! Environment:
//! - `TERN_WGPU_TIMEOUT`: seconds any wait on the device may take (default
//!   120; fractions allowed). A download, a synchronize or the opening of the
//!   device that takes longer is an error naming the wait
//!   ([`BackendError::DeviceLost`], or [`WgpuError::Timeout`] when opening),
//!   not a hang; a value that is not a positive number of seconds makes
//!   opening fail with [`WgpuError::InvalidTimeout`].
//! - `TERN_WGPU_STATS`: print the runtime's counters when the backend is
//!   dropped; `profile` also times every kernel on the host (each dispatch
//!   submitted and waited for alone); `timestamps` times every kernel on the
//!   GPU with timestamp queries (where the adapter offers
//!   `TIMESTAMP_QUERY_INSIDE_PASSES`; else counters only, with a note).
//! - `TERN_WGPU_ADAPTER`: the adapter [`test_device`] uses (a name substring).
//! - Tuning knobs (positive integers; anything else keeps the default):
//!   `TERN_WGPU_SUBMIT_EVERY` (dispatches recorded before a submission that
//!   does not wait, default 32: the device starts while the host records
//!   the rest of a step) and `TERN_WGPU_FUSED_WGS` (workgroups a fused
//!   block dispatch launches at most, default 264; also
//!   [`WgpuOptions::fused_workgroups`]).

mod ctx;
mod ops;
mod shader;
#[cfg(test)]
mod variants;
mod watchdog;

use std::sync::{Arc, Mutex};

pub use ctx::{list_adapters, AdapterReport, WgpuError, WgpuOptions};
use tern_backend::{Activation, AdamW, AttnDims, Backend, BackendError, Gemm, TernarySource};

pub use ops::half::WHalf;
pub use ops::ternary::WTernary;

/// The device tern's tests run on: the adapter `TERN_WGPU_ADAPTER` names (a
/// substring of its name), else the fallback (software) adapter — Mesa's
/// lavapipe in CI — with `opts`' other settings. Without one it reports the
/// test as skipped (a failure under `CI=true`, through
/// [`tern_backend::conformance::missing`]) and returns `None`.
pub fn test_device(opts: WgpuOptions) -> Option<Wgpu> {
    let opts = WgpuOptions {
        force_fallback: std::env::var_os("TERN_WGPU_ADAPTER").is_none(),
        adapter: std::env::var("TERN_WGPU_ADAPTER").ok(),
        ..opts
    };
    match Wgpu::with_options(&opts) {
        Ok(b) => Some(b),
        Err(e) => {
            tern_backend::conformance::missing(format_args!(
                "wgpu test: {e} (install mesa-vulkan-drivers libvulkan1 for lavapipe)"
            ));
            None
        }
    }
}

/// The wgpu backend.
pub struct Wgpu {
    pub(crate) ctx: ctx::Ctx,
}

/// An f32 device buffer.
pub struct WBuf {
    pub(crate) buf: wgpu::Buffer,
    pub(crate) len: usize,
    owner: Owner,
}

/// A u32 device buffer.
pub struct WIds {
    pub(crate) buf: wgpu::Buffer,
    pub(crate) len: usize,
    owner: Owner,
}

/// Where a dropped buffer goes: the backend's pool, for reuse by the next
/// allocation of its size, or back to the device when the pool is full.
#[derive(Clone)]
pub(crate) struct Owner {
    pool: Arc<Mutex<ctx::Pool>>,
    mem: Arc<Mutex<(u64, u64)>>,
    dropped: Arc<Mutex<Vec<wgpu::Buffer>>>,
}

impl Owner {
    pub(crate) fn release(&self, buf: &wgpu::Buffer) {
        if self.pool.lock().unwrap_or_else(|p| p.into_inner()).put(buf) {
            return;
        }
        let mut m = self.mem.lock().unwrap_or_else(|p| p.into_inner());
        m.0 = m.0.saturating_sub(buf.size());
        drop(m);
        // freed once the bind groups that hold it are purged
        self.dropped
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(buf.clone());
    }
}

impl Drop for WBuf {
    fn drop(&mut self) {
        self.owner.release(&self.buf);
    }
}
impl Drop for WIds {
    fn drop(&mut self) {
        self.owner.release(&self.buf);
    }
}

impl Wgpu {
    /// The best adapter (discrete, then integrated GPU, then software).
    pub fn new() -> Result<Wgpu, WgpuError> {
        Self::with_options(&WgpuOptions::default())
    }

    /// Mesa lavapipe or another software adapter (CI without a GPU).
    pub fn fallback() -> Result<Wgpu, WgpuError> {
        Self::with_options(&WgpuOptions {
            force_fallback: true,
            ..Default::default()
        })
    }

    pub fn with_options(opts: &WgpuOptions) -> Result<Wgpu, WgpuError> {
        Ok(Wgpu {
            ctx: ctx::Ctx::new(opts)?,
        })
    }

    /// The adapter, its limits and features.
    pub fn report(&self) -> AdapterReport {
        self.ctx.report()
    }

    /// `(current, peak)` bytes of device memory held by tern's buffers
    /// (weights, activations, optimizer state, freed buffers kept for reuse;
    /// not the driver's own).
    pub fn memory(&self) -> (u64, u64) {
        *self.ctx.mem.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wait for every recorded op to finish (benchmarks time with it).
    pub fn synchronize(&self) -> Result<(), BackendError> {
        self.ctx.flush();
        self.ctx.wait()
    }

    /// Destroy the device, as a driver reset would: every later download
    /// reports [`BackendError::DeviceLost`]. For testing error paths.
    #[doc(hidden)]
    pub fn simulate_device_loss(&self) {
        self.ctx.device.destroy();
    }

    /// Make every new scratch allocation inside an op fail as out of device
    /// memory (and drop the cached ones). For testing error paths.
    #[doc(hidden)]
    pub fn simulate_scratch_oom(&self) {
        self.ctx
            .refuse_scratch
            .store(true, std::sync::atomic::Ordering::Relaxed);
        self.ctx.drop_scratch();
    }

    pub(crate) fn owner(&self) -> Owner {
        Owner {
            pool: self.ctx.pool.clone(),
            mem: self.ctx.mem.clone(),
            dropped: self.ctx.dropped.clone(),
        }
    }

    /// A zeroed f32 buffer of `len` elements.
    pub(crate) fn new_buf(&self, what: &str, len: usize) -> Result<WBuf, BackendError> {
        self.alloc(what, len, true)
    }

    /// An f32 buffer of `len` elements; zeroed when `zero`.
    fn alloc(&self, what: &str, len: usize, zero: bool) -> Result<WBuf, BackendError> {
        let (buf, stale) = self.ctx.buffer(what, len as u64 * 4)?;
        if stale && zero {
            ops::basic::fill_zero(self, &buf, len);
        }
        Ok(WBuf {
            buf,
            len,
            owner: self.owner(),
        })
    }

    pub(crate) fn new_ids(&self, what: &str, len: usize) -> Result<WIds, BackendError> {
        let (buf, _) = self.ctx.buffer(what, len as u64 * 4)?;
        Ok(WIds {
            buf,
            len,
            owner: self.owner(),
        })
    }
}

impl Backend for Wgpu {
    type Buf = WBuf;
    type Ids = WIds;
    type Ternary = WTernary;
    type Half = WHalf;

    fn name(&self) -> String {
        self.ctx.name()
    }
    fn device_memory(&self) -> Option<(u64, u64)> {
        Some(self.memory())
    }
    fn synchronize(&self) -> Result<(), BackendError> {
        Wgpu::synchronize(self)
    }

    fn zeros(&self, len: usize) -> Result<WBuf, BackendError> {
        self.new_buf("tensor", len)
    }
    fn alloc(&self, len: usize) -> Result<WBuf, BackendError> {
        self.alloc("tensor", len, false)
    }
    fn upload(&self, data: &[f32]) -> Result<WBuf, BackendError> {
        let b = self.alloc("tensor", data.len(), false)?;
        self.ctx.write_bytes(&b.buf, 0, bytemuck::cast_slice(data));
        Ok(b)
    }
    fn upload_ids(&self, data: &[u32]) -> Result<WIds, BackendError> {
        let b = self.new_ids("ids", data.len())?;
        self.ctx.write_bytes(&b.buf, 0, bytemuck::cast_slice(data));
        Ok(b)
    }
    fn upload_ternary(&self, w: &dyn TernarySource) -> Result<WTernary, BackendError> {
        ops::ternary::upload_ternary(self, w)
    }
    fn write(&self, buf: &mut WBuf, offset: usize, data: &[f32]) {
        assert!(offset + data.len() <= buf.len, "write: out of range");
        self.ctx
            .write_bytes(&buf.buf, offset as u64 * 4, bytemuck::cast_slice(data));
    }
    fn write_ids(&self, buf: &mut WIds, data: &[u32]) {
        assert!(data.len() <= buf.len, "write_ids: out of range");
        self.ctx
            .write_bytes(&buf.buf, 0, bytemuck::cast_slice(data));
    }
    fn download(&self, buf: &WBuf) -> Result<Vec<f32>, BackendError> {
        let bytes = self.ctx.read_bytes(&buf.buf, 0, buf.len as u64 * 4)?;
        Ok(bytemuck::pod_collect_to_vec(&bytes))
    }
    fn download_ids(&self, ids: &WIds) -> Result<Vec<u32>, BackendError> {
        let bytes = self.ctx.read_bytes(&ids.buf, 0, ids.len as u64 * 4)?;
        Ok(bytemuck::pod_collect_to_vec(&bytes))
    }
    fn len(&self, buf: &WBuf) -> usize {
        buf.len
    }
    fn ternary_bytes(&self, w: &WTernary) -> u64 {
        ops::ternary::ternary_bytes(w)
    }
    fn ternary_shape(&self, w: &WTernary) -> (usize, usize) {
        ops::ternary::ternary_shape(w)
    }
    fn upload_half(&self, data: &[f32]) -> Result<WHalf, BackendError> {
        ops::half::upload_half(self, data)
    }
    fn half_len(&self, h: &WHalf) -> usize {
        h.len
    }

    fn ternary_matmul(&self, w: &WTernary, x: &WBuf, y: &mut WBuf, rows: usize) {
        ops::ternary::ternary_matmul(self, w, x, y, rows)
    }
    fn ternary_matmul_float(&self, w: &WTernary, x: &WBuf, y: &mut WBuf, rows: usize) {
        ops::ternary::ternary_matmul_float(self, w, x, y, rows)
    }
    fn ternary_matmul_backward(&self, w: &WTernary, dy: &WBuf, dx: &mut WBuf, rows: usize) {
        ops::ternary::ternary_matmul_backward(self, w, dy, dx, rows)
    }
    fn requantize_ternary(&self, latent: &WBuf, w: &mut WTernary) {
        ops::ternary::requantize_ternary(self, latent, w)
    }
    fn fake_quant_act(&self, x: &WBuf, y: &mut WBuf, rows: usize, cols: usize) {
        ops::ternary::fake_quant_act(self, x, y, rows, cols)
    }

    fn matmul(&self, a: &WBuf, b: &WBuf, c: &mut WBuf, g: Gemm) {
        ops::gemm::matmul(self, a, b, c, g)
    }
    fn copy(&self, x: &WBuf, y: &mut WBuf) {
        tern_backend::contract::same_len("wgpu", "copy", &["x", "y"], &[x.len, y.len]);
        ops::basic::copy_range(self, x, 0, y, 0, x.len);
    }
    fn axpy(&self, alpha: f32, x: &WBuf, y: &mut WBuf) {
        ops::basic::axpy(self, alpha, x, y)
    }
    fn scale(&self, alpha: f32, y: &mut WBuf) {
        ops::basic::scale(self, alpha, y)
    }
    fn sum_squares(&self, x: &WBuf, out: &mut WBuf, index: usize) {
        ops::reduce::sum_squares(self, x, out, index)
    }
    fn dropout(&self, x: &WBuf, y: &mut WBuf, p: f32, seed: u64) {
        ops::elementwise::dropout(self, x, y, p, seed)
    }
    fn copy_range(&self, src: &WBuf, src_off: usize, dst: &mut WBuf, dst_off: usize, n: usize) {
        ops::basic::copy_range(self, src, src_off, dst, dst_off, n)
    }

    fn rmsnorm(
        &self,
        x: &WBuf,
        w: &WBuf,
        y: &mut WBuf,
        rstd: &mut WBuf,
        rows: usize,
        dim: usize,
        eps: f32,
    ) {
        ops::norm::rmsnorm(self, x, w, y, rstd, rows, dim, eps)
    }
    fn rmsnorm_backward(
        &self,
        x: &WBuf,
        w: &WBuf,
        rstd: &WBuf,
        dy: &WBuf,
        dx: &mut WBuf,
        dw: Option<&mut WBuf>,
        rows: usize,
        dim: usize,
    ) {
        ops::norm::rmsnorm_backward(self, x, w, rstd, dy, dx, dw, rows, dim)
    }

    fn rope(
        &self,
        x: &mut WBuf,
        pos: &WIds,
        rows: usize,
        n_heads: usize,
        head_dim: usize,
        theta: f32,
        inverse: bool,
    ) {
        ops::rope::rope(self, x, pos, rows, n_heads, head_dim, theta, inverse)
    }
    fn attention(&self, q: &WBuf, k: &WBuf, v: &WBuf, out: &mut WBuf, lse: &mut WBuf, d: AttnDims) {
        ops::attention::attention(self, q, k, v, out, lse, d)
    }
    fn attention_backward(
        &self,
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
        ops::attention::attention_backward(self, q, k, v, out, lse, dout, dq, dk, dv, d)
    }

    fn gate(&self, g: &WBuf, u: &WBuf, y: &mut WBuf, act: Activation) {
        ops::elementwise::gate(self, g, u, y, act)
    }
    fn gate_backward(
        &self,
        g: &WBuf,
        u: &WBuf,
        dy: &WBuf,
        dg: &mut WBuf,
        du: &mut WBuf,
        act: Activation,
    ) {
        ops::elementwise::gate_backward(self, g, u, dy, dg, du, act)
    }

    fn embedding(&self, table: &WBuf, ids: &WIds, y: &mut WBuf, dim: usize) {
        ops::embedding::embedding(self, table, ids, y, dim)
    }
    fn embedding_backward(&self, ids: &WIds, dy: &WBuf, dtable: &mut WBuf, dim: usize) {
        ops::embedding::embedding_backward(self, ids, dy, dtable, dim)
    }
    fn embedding_half(&self, table: &WHalf, ids: &WIds, y: &mut WBuf, dim: usize) {
        ops::half::embedding_half(self, table, ids, y, dim)
    }
    fn matmul_half(&self, a: &WBuf, b: &WHalf, c: &mut WBuf, g: Gemm) {
        ops::half::matmul_half(self, a, b, c, g)
    }

    fn cross_entropy(
        &self,
        logits: &WBuf,
        targets: &WIds,
        loss: &mut WBuf,
        dlogits: Option<&mut WBuf>,
        rows: usize,
        vocab: usize,
        grad_scale: f32,
    ) {
        ops::loss::cross_entropy(
            self, logits, targets, loss, dlogits, rows, vocab, grad_scale,
        )
    }

    fn attn_in(&self, a: tern_backend::fused::AttnIn<'_, Self>) {
        ops::fused::attn_in(self, a)
    }
    fn norm_ternary_residual(
        &self,
        norm: tern_backend::fused::NormIn<'_, Self>,
        w: &WTernary,
        residual: &WBuf,
        out: &mut WBuf,
    ) {
        ops::fused::norm_ternary_residual(self, norm, w, residual, out)
    }
    fn ffn_in(&self, a: tern_backend::fused::FfnIn<'_, Self>) {
        ops::fused::ffn_in(self, a)
    }
    fn argmax(
        &self,
        x: &WBuf,
        rows: usize,
        cols: usize,
        out: &mut WIds,
        hist: Option<(&mut WIds, usize)>,
    ) {
        ops::reduce::argmax(self, x, rows, cols, out, hist)
    }
    fn adamw(&self, p: &mut WBuf, g: &WBuf, m: &mut WBuf, v: &mut WBuf, h: AdamW) {
        ops::elementwise::adamw(self, p, g, m, v, h)
    }
    fn adamw_multi(&self, ts: &mut [tern_backend::multi::AdamWTensor<'_, Self>], h: AdamW) {
        ops::multi::adamw_multi(self, ts, h)
    }
    fn matmul_many(&self, ps: &mut [tern_backend::multi::Product<'_, Self>]) {
        ops::multi::matmul_many(self, ps)
    }
}
