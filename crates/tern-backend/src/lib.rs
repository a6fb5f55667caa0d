//! The backend trait: every op BitNet inference and LoRA/QAT training need,
//! as forward/backward pairs over device buffers.
//!
//! ```
//! use tern_backend::{Backend, Cpu, Gemm, TernaryCodes};
//!
//! let b = Cpu::new();
//! // C = A B with A [2, 3] and B [3, 2]
//! let a = b.upload(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0])?;
//! let m = b.upload(&[1.0, 0.0, 0.0, 1.0, 1.0, 1.0])?;
//! let mut c = b.zeros(4)?;
//! b.matmul(&a, &m, &mut c, Gemm::new(2, 3, 2));
//! assert_eq!(b.download(&c)?, [4.0, 5.0, 10.0, 11.0]);
//!
//! // BitLinear: ternary codes times int8-quantized activations, times the
//! // scale. x = [127, -127] quantizes exactly (a = 1), so y = codes · x.
//! let w = b.upload_ternary(&TernaryCodes {
//!     rows: 2,
//!     cols: 2,
//!     codes: vec![1i8, 0, -1, 1],
//!     scale: 0.5,
//! })?;
//! let x = b.upload(&[127.0, -127.0])?;
//! let mut y = b.zeros(2)?;
//! b.ternary_matmul(&w, &x, &mut y, 1);
//! assert_eq!(b.download(&y)?, [63.5, -127.0]);
//! # Ok::<(), tern_backend::BackendError>(())
//! ```
//!
//! A new implementation is a type with the associated buffer types, the
//! memory calls and the op set; it proves it honours the contract by
//! stamping the conformance suite ([`conformance_tests!`]) in its tests.
//! `examples/custom_backend.rs` is one (a decorator over [`Cpu`] that counts
//! ops), run through the whole suite by `tests/custom_backend.rs`.
//!
//! Contract (what every implementation, CPU or wgpu, must honour):
//! - Buffers are associated types; host <-> device copies happen only in
//!   `upload*` and `download*`. Ops take their outputs as `&mut` buffers that
//!   the caller allocated once (arenas sized per config, batch and context), so
//!   no op allocates device memory.
//! - Ops may be asynchronous: only `download*` synchronizes. A GPU
//!   implementation records ops into one command stream and submits lazily.
//! - Shapes are passed explicitly; buffers are row-major with the innermost
//!   dimension last (`[rows, cols]`). Ops check lengths and panic on a
//!   mismatch: shapes come from the model code, never from user input, which is
//!   validated before it reaches a backend. The shared checks are in
//!   [`contract`], so every implementation refuses the same calls alike.
//! - Backward ops OVERWRITE their input-gradient outputs unless the doc says
//!   "accumulates" (weight gradients, embedding scatter-add).
//! - Integer paths (ternary codes times int8 activations, i32 accumulation) are
//!   exact; float paths are checked against a scalar reference with a stated
//!   tolerance and against finite differences ([`conformance`]).
//! - Half-precision matrices ([`Backend::Half`]) hold IEEE binary16 values:
//!   [`Backend::upload_half`] rounds each f32 to the nearest f16 (ties to
//!   even, [`f16_bits`]) and refuses a value that does not round to a finite
//!   f16; the ops on them widen to f32 and accumulate in f32, so they equal
//!   the f32 ops on the rounded values up to summation order.

pub mod conformance;
pub mod contract;
pub mod cpu;
pub mod fused;
pub mod multi;

pub use cpu::Cpu;

/// A ternary matrix as the host hands it to a backend: `rows` output features
/// by `cols` input features, codes in `{-1, 0, 1}` and one per-tensor scale
/// (BitNet's absmean `w_scale`: the effective weight is `code * scale`).
///
/// Rows are produced on demand so a loader can stream them from a packed file
/// (TQ2_0, TQ1_0, I2_S, Q8_0) without ever unpacking a whole tensor.
pub trait TernarySource {
    fn rows(&self) -> usize;
    fn cols(&self) -> usize;
    fn scale(&self) -> f32;
    /// Write the codes of row `r` (length `cols`) into `out`.
    fn row_codes(&self, r: usize, out: &mut [i8]);
}

/// Codes already in memory (tests, conversion, freshly quantized weights),
/// borrowed (`&[i8]`) or owned (`Vec<i8>`).
pub struct TernaryCodes<C: AsRef<[i8]>> {
    pub rows: usize,
    pub cols: usize,
    pub codes: C,
    pub scale: f32,
}

impl<C: AsRef<[i8]>> TernarySource for TernaryCodes<C> {
    fn rows(&self) -> usize {
        self.rows
    }
    fn cols(&self) -> usize {
        self.cols
    }
    fn scale(&self) -> f32 {
        self.scale
    }
    fn row_codes(&self, r: usize, out: &mut [i8]) {
        out.copy_from_slice(&self.codes.as_ref()[r * self.cols..(r + 1) * self.cols]);
    }
}

/// PCG-style 32-bit hash (`pcg_hash`): cheap, well mixed, and expressible in
/// 32-bit integer arithmetic (WGSL has no 64-bit integers).
#[inline]
pub fn hash32(v: u32) -> u32 {
    let state = v.wrapping_mul(747_796_405).wrapping_add(2_891_336_453);
    let word = ((state >> ((state >> 28) + 4)) ^ state).wrapping_mul(277_803_737);
    (word >> 22) ^ word
}

/// Whether element `i` survives dropout with probability `p` under `seed`:
/// `hash32(hash32(i ^ seed_lo) ^ seed_hi) >= p · 2^32`. Every backend uses
/// exactly this mask.
#[inline]
pub fn dropout_keep(seed: u64, i: u32, p: f32) -> bool {
    let h = hash32(hash32(i ^ seed as u32) ^ (seed >> 32) as u32);
    let threshold = ((p as f64) * 4_294_967_296.0).min(u32::MAX as f64) as u32;
    h >= threshold
}

/// The sequential greedy choice [`Backend::argmax`]
/// specifies, for one row.
pub fn argmax_row(row: &[f32]) -> u32 {
    let mut best = 0usize;
    for (i, &x) in row.iter().enumerate() {
        if x > row[best] || row[best].is_nan() {
            best = i;
        }
    }
    best as u32
}

/// Errors a backend reports (device loss, out of memory, limits).
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("{backend}: out of device memory allocating {bytes} bytes for {what}")]
    OutOfMemory {
        backend: String,
        what: String,
        bytes: u64,
    },
    #[error("{backend}: device lost: {reason}")]
    DeviceLost { backend: String, reason: String },
    #[error("{backend}: {what} needs {needed} but the device allows {limit}")]
    Limit {
        backend: String,
        what: String,
        needed: u64,
        limit: u64,
    },
    #[error("{backend}: invalid ternary source {what}: {reason}")]
    InvalidTernary {
        backend: String,
        what: String,
        reason: String,
    },
    /// A value given to [`Backend::upload_half`] that has no finite f16:
    /// beyond the largest f16 (65504) after rounding, infinite or NaN.
    #[error(
        "{backend}: element {index} is {value}, which does not round to a finite f16 \
         (|x| must stay below 65520); keep this tensor in f32"
    )]
    HalfRange {
        backend: String,
        index: usize,
        value: f32,
    },
}

/// The IEEE binary16 encoding of every value of `data`, rounded to the
/// nearest f16 with ties to even (subnormals included), as
/// [`Backend::upload_half`] stores them. A value without a finite f16
/// (`|x| >= 65520`, infinities, NaN) is refused with
/// [`BackendError::HalfRange`] naming `backend` and the first such index:
/// half precision is a storage choice for tensors known to be small
/// (embeddings, heads), so saturating would silently change the model.
pub fn f16_bits(backend: &str, data: &[f32]) -> Result<Vec<u16>, BackendError> {
    let mut out = vec![half::f16::ZERO; data.len()];
    half::slice::HalfFloatSliceExt::convert_from_f32_slice(&mut out[..], data);
    if let Some(index) = out.iter().position(|h| !h.is_finite()) {
        return Err(BackendError::HalfRange {
            backend: backend.into(),
            index,
            value: data[index],
        });
    }
    Ok(half::slice::HalfFloatSliceExt::reinterpret_cast(&out[..]).to_vec())
}

/// `C = alpha * op(A) · op(B) + beta * C` with `op(A)` of shape `[m, k]` and
/// `op(B)` of shape `[k, n]`. With `trans_a`, A is stored `[k, m]`; with
/// `trans_b`, B is stored `[n, k]` (the layout of a torch `Linear` weight).
/// With `beta == 0`, C is not read (as in BLAS: NaN in C does not propagate).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Gemm {
    pub m: usize,
    pub k: usize,
    pub n: usize,
    pub trans_a: bool,
    pub trans_b: bool,
    pub alpha: f32,
    pub beta: f32,
}

impl Gemm {
    /// `C = A · B` with `A [m, k]`, `B [k, n]`, neither transposed,
    /// `alpha = 1`, `beta = 0`; chain the setters below for the rest.
    ///
    /// ```
    /// use tern_backend::Gemm;
    /// let g = Gemm::new(4, 8, 16).trans_b().alpha(0.5).accumulate();
    /// assert!(g.trans_b && !g.trans_a && g.alpha == 0.5 && g.beta == 1.0);
    /// ```
    pub const fn new(m: usize, k: usize, n: usize) -> Self {
        Gemm {
            m,
            k,
            n,
            trans_a: false,
            trans_b: false,
            alpha: 1.0,
            beta: 0.0,
        }
    }

    /// A is stored `[k, m]`.
    pub const fn trans_a(mut self) -> Self {
        self.trans_a = true;
        self
    }

    /// B is stored `[n, k]` (a torch `Linear` weight).
    pub const fn trans_b(mut self) -> Self {
        self.trans_b = true;
        self
    }

    /// Scale the product by `alpha`.
    pub const fn alpha(mut self, alpha: f32) -> Self {
        self.alpha = alpha;
        self
    }

    /// `beta = 1`: add the product to C.
    pub const fn accumulate(mut self) -> Self {
        self.beta = 1.0;
        self
    }

    /// Set `beta` explicitly.
    pub const fn beta(mut self, beta: f32) -> Self {
        self.beta = beta;
        self
    }
}

/// Gated activation of the feed-forward block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Activation {
    /// `relu(g)^2 * u` (BitNet b1.58 2B-4T).
    Relu2,
    /// `silu(g) * u` (1bitLLM, Llama).
    Silu,
}

/// Geometry of causal self-attention with grouped-query heads.
///
/// `q` is `[batch, n_new, n_heads, head_dim]`; the keys and values are
/// `[batch, kv_len, n_kv_heads, head_dim]`, of which the first
/// `n_past + n_new` rows are valid (`kv_len` is the cache capacity). Query `t`
/// sits at position `n_past + t` and sees keys `0..=n_past + t`. The scale is
/// `1 / sqrt(head_dim)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttnDims {
    pub batch: usize,
    pub n_new: usize,
    pub n_past: usize,
    pub kv_len: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
}

/// AdamW hyper-parameters for one update (`step` counts from 1).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamW {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    pub step: u32,
}

/// The op set. See the crate docs for the contract.
pub trait Backend: Send + Sync {
    /// f32 device buffer.
    type Buf: Send + Sync;
    /// u32 device buffer (token ids, targets, positions).
    type Ids: Send + Sync;
    /// A packed ternary matrix with its per-tensor scale.
    type Ternary: Send + Sync;
    /// A half-precision (IEEE f16) matrix: the storage of the embedding
    /// table and the output head (half the bytes of f32 and half the bytes
    /// read per decoded token). Ops widen it to f32 and accumulate in f32.
    type Half: Send + Sync;

    /// Human-readable name (`cpu (2 threads, avx2)`, `wgpu: NVIDIA H100 (Vulkan)`).
    fn name(&self) -> String;

    /// Device memory held by this backend's buffers as `(current, peak)`
    /// bytes, for backends with memory of their own (GPUs); `None` where the
    /// host's allocator is the device (the CPU: see the process's RSS).
    fn device_memory(&self) -> Option<(u64, u64)> {
        None
    }

    /// Wait until every recorded op has finished; reports an asynchronous
    /// device error (out of memory, device lost). Timing code calls it.
    fn synchronize(&self) -> Result<(), BackendError> {
        Ok(())
    }

    // ---- memory -------------------------------------------------------
    fn zeros(&self, len: usize) -> Result<Self::Buf, BackendError>;
    /// A buffer of `len` values with unspecified contents, for an output that
    /// the next op overwrites entirely before anything reads it. Backends
    /// that recycle memory skip the zeroing; the default is
    /// [`Backend::zeros`].
    fn alloc(&self, len: usize) -> Result<Self::Buf, BackendError> {
        self.zeros(len)
    }
    fn upload(&self, data: &[f32]) -> Result<Self::Buf, BackendError>;
    fn upload_ids(&self, data: &[u32]) -> Result<Self::Ids, BackendError>;
    fn upload_ternary(&self, w: &dyn TernarySource) -> Result<Self::Ternary, BackendError>;
    /// Overwrite `buf[offset..offset + data.len()]` from the host.
    fn write(&self, buf: &mut Self::Buf, offset: usize, data: &[f32]);
    fn write_ids(&self, buf: &mut Self::Ids, data: &[u32]);
    /// Copy the buffer to the host (synchronizes).
    fn download(&self, buf: &Self::Buf) -> Result<Vec<f32>, BackendError>;
    /// Copy the id buffer to the host (synchronizes).
    fn download_ids(&self, ids: &Self::Ids) -> Result<Vec<u32>, BackendError>;
    fn len(&self, buf: &Self::Buf) -> usize;
    /// Bytes the packed weight occupies on the device.
    fn ternary_bytes(&self, w: &Self::Ternary) -> u64;
    /// `(rows, cols)` = `(out_features, in_features)`.
    fn ternary_shape(&self, w: &Self::Ternary) -> (usize, usize);
    /// Upload `data` as f16, each value rounded to the nearest f16 (ties to
    /// even); a value that does not round to a finite f16 is
    /// [`BackendError::HalfRange`] ([`f16_bits`]: every backend refuses the
    /// same inputs).
    fn upload_half(&self, data: &[f32]) -> Result<Self::Half, BackendError>;
    /// Number of f16 values in `h`.
    fn half_len(&self, h: &Self::Half) -> usize;

    // ---- BitLinear ----------------------------------------------------
    /// BitNet W1.58A8 product: for each of `rows` rows of `x` (`[rows, cols]`),
    /// quantize to int8 per row (`a = 127 / max|x|`, clamp 1e-5, round half to
    /// even, clamp to [-128, 127]), take the exact i32 dot with every ternary
    /// row, and write `y[r, o] = acc * w_scale / a` (`[rows, out]`).
    fn ternary_matmul(&self, w: &Self::Ternary, x: &Self::Buf, y: &mut Self::Buf, rows: usize);
    /// The same ternary weights WITHOUT activation quantization:
    /// `y = x · (W_t * w_scale)ᵀ` in f32 (`x [rows, in]` -> `y [rows, out]`).
    /// A diagnostic path, not BitNet's W1.58A8 forward: it exists to compare
    /// with runtimes that multiply float activations by the dequantized
    /// weights (llama.cpp with F32 weights). Float path: checked against the
    /// f64 reference with a stated budget.
    fn ternary_matmul_float(
        &self,
        w: &Self::Ternary,
        x: &Self::Buf,
        y: &mut Self::Buf,
        rows: usize,
    );
    /// Input gradient through the BitLinear with the straight-through
    /// estimator on both quantizers: `dx = dy · (W_t * w_scale)`
    /// (`dy [rows, out]` -> `dx [rows, in]`).
    fn ternary_matmul_backward(
        &self,
        w: &Self::Ternary,
        dy: &Self::Buf,
        dx: &mut Self::Buf,
        rows: usize,
    );

    /// Quantization-aware training: re-ternarize latent f32 weights
    /// (`latent`, `[rows, cols]` of `w`'s shape) into `w` on the device, with
    /// exactly `tern_tensor::quant::absmean_ternary`'s semantics: `s = 1 /
    /// max(mean|W|, 1e-5)` (the sum of `|W|` taken in f64 and rounded to f32
    /// once, divided by the element count as f32), codes
    /// `clamp(round_half_even(W * s), -1, 1)`, scale `1 / s`.
    fn requantize_ternary(&self, latent: &Self::Buf, w: &mut Self::Ternary);
    /// The fake-quantized activations BitLinear multiplies: per row of `cols`
    /// values, `a = 127 / max(max|x|, 1e-5)` and
    /// `y = clamp(round_half_even(x * a), -128, 127) / a` (bit for bit
    /// `tern_tensor::quant::fake_quant_act`). Under the straight-through
    /// estimator the weight gradient of a BitLinear is `dyᵀ · y`.
    fn fake_quant_act(&self, x: &Self::Buf, y: &mut Self::Buf, rows: usize, cols: usize);

    // ---- dense --------------------------------------------------------
    /// See [`Gemm`].
    fn matmul(&self, a: &Self::Buf, b: &Self::Buf, c: &mut Self::Buf, g: Gemm);
    /// `y = x` (same length).
    fn copy(&self, x: &Self::Buf, y: &mut Self::Buf);
    /// `y += alpha * x` (same length).
    fn axpy(&self, alpha: f32, x: &Self::Buf, y: &mut Self::Buf);
    /// `y *= alpha`.
    fn scale(&self, alpha: f32, y: &mut Self::Buf);
    /// `out[index] = Σ x_i^2` (global-norm gradient clipping: one slot per
    /// parameter buffer, then one small download). Accumulated in at least
    /// f32 with a bounded error (the CPU uses f64).
    fn sum_squares(&self, x: &Self::Buf, out: &mut Self::Buf, index: usize);
    /// Inverted dropout with a counter-based mask: `y[i] = x[i] / (1 - p)`
    /// where [`dropout_keep`]`(seed, i, p)`, else 0. The mask depends only on
    /// `(seed, i, p)`, so applying it to the output gradient with the same seed
    /// is the exact backward, and recomputation reproduces it.
    fn dropout(&self, x: &Self::Buf, y: &mut Self::Buf, p: f32, seed: u64);
    /// Copy `n` contiguous values from `src[src_off..]` to `dst[dst_off..]`
    /// (KV-cache appends, slicing fused buffers).
    fn copy_range(
        &self,
        src: &Self::Buf,
        src_off: usize,
        dst: &mut Self::Buf,
        dst_off: usize,
        n: usize,
    );

    // ---- normalization ------------------------------------------------
    /// RMSNorm per row: `y = x / sqrt(mean(x^2) + eps) * w`; stores
    /// `rstd[r] = 1 / sqrt(mean(x_r^2) + eps)` for the backward.
    #[allow(clippy::too_many_arguments)]
    fn rmsnorm(
        &self,
        x: &Self::Buf,
        w: &Self::Buf,
        y: &mut Self::Buf,
        rstd: &mut Self::Buf,
        rows: usize,
        dim: usize,
        eps: f32,
    );
    /// Backward of [`Backend::rmsnorm`]: writes `dx`; accumulates `dw` when given.
    #[allow(clippy::too_many_arguments)]
    fn rmsnorm_backward(
        &self,
        x: &Self::Buf,
        w: &Self::Buf,
        rstd: &Self::Buf,
        dy: &Self::Buf,
        dx: &mut Self::Buf,
        dw: Option<&mut Self::Buf>,
        rows: usize,
        dim: usize,
    );

    // ---- positions and attention -------------------------------------
    /// NeoX rotary embedding in place on `x` (`[rows, n_heads, head_dim]`),
    /// rotating pairs `(i, i + head_dim/2)` by `pos[r] * theta^(-2i/head_dim)`.
    /// With `inverse`, rotates by the negative angle (the exact backward).
    #[allow(clippy::too_many_arguments)]
    fn rope(
        &self,
        x: &mut Self::Buf,
        pos: &Self::Ids,
        rows: usize,
        n_heads: usize,
        head_dim: usize,
        theta: f32,
        inverse: bool,
    );
    /// Causal GQA attention (see [`AttnDims`]): `out` is `[batch, n_new,
    /// n_heads, head_dim]`; `lse` (`[batch, n_heads, n_new]`) receives each
    /// query's log-sum-exp of scaled scores for the backward.
    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        q: &Self::Buf,
        k: &Self::Buf,
        v: &Self::Buf,
        out: &mut Self::Buf,
        lse: &mut Self::Buf,
        d: AttnDims,
    );
    /// Backward of [`Backend::attention`] with `n_past = 0` and
    /// `kv_len = n_new` (training): writes `dq`, `dk`, `dv`.
    #[allow(clippy::too_many_arguments)]
    fn attention_backward(
        &self,
        q: &Self::Buf,
        k: &Self::Buf,
        v: &Self::Buf,
        out: &Self::Buf,
        lse: &Self::Buf,
        dout: &Self::Buf,
        dq: &mut Self::Buf,
        dk: &mut Self::Buf,
        dv: &mut Self::Buf,
        d: AttnDims,
    );

    // ---- feed-forward gate -------------------------------------------
    /// `y = act(g) * u` element-wise.
    fn gate(&self, g: &Self::Buf, u: &Self::Buf, y: &mut Self::Buf, act: Activation);
    /// Writes `dg` and `du`.
    fn gate_backward(
        &self,
        g: &Self::Buf,
        u: &Self::Buf,
        dy: &Self::Buf,
        dg: &mut Self::Buf,
        du: &mut Self::Buf,
        act: Activation,
    );

    // ---- embedding ------------------------------------------------------
    /// `y[r] = table[ids[r]]` (`table [vocab, dim]`, `y [rows, dim]`).
    fn embedding(&self, table: &Self::Buf, ids: &Self::Ids, y: &mut Self::Buf, dim: usize);
    /// Scatter-add: `dtable[ids[r]] += dy[r]` (accumulates).
    fn embedding_backward(
        &self,
        ids: &Self::Ids,
        dy: &Self::Buf,
        dtable: &mut Self::Buf,
        dim: usize,
    );

    // ---- half-precision embedding and head ------------------------------
    /// [`Backend::embedding`] from an f16 table: `y[r] = f32(table[ids[r]])`
    /// (exact: every f16 is an f32).
    fn embedding_half(&self, table: &Self::Half, ids: &Self::Ids, y: &mut Self::Buf, dim: usize);
    /// [`Backend::matmul`] with an f16 `B`: `C = alpha op(A) · op(B) + beta
    /// C`, every f16 of B widened to f32 and the products accumulated in f32.
    /// The LM head is `trans_b` (`logits = x · Bᵀ`, B `[vocab, hidden]`), its
    /// input gradient plain (`dx = dlogits · B`); every layout is honoured.
    /// Float path: equal to [`Backend::matmul`] on the f16 values of B up to
    /// summation order (the CPU keeps the same order: bit-identical).
    fn matmul_half(&self, a: &Self::Buf, b: &Self::Half, c: &mut Self::Buf, g: Gemm);

    // ---- loss ----------------------------------------------------------
    /// Fused softmax cross-entropy over `rows` rows of `logits [rows, vocab]`.
    /// `targets[r] == u32::MAX` masks the row (loss 0, gradient 0).
    /// Writes `loss[r]` (natural log) and, when given,
    /// `dlogits = grad_scale * (softmax - onehot)` for the unmasked rows.
    #[allow(clippy::too_many_arguments)]
    fn cross_entropy(
        &self,
        logits: &Self::Buf,
        targets: &Self::Ids,
        loss: &mut Self::Buf,
        dlogits: Option<&mut Self::Buf>,
        rows: usize,
        vocab: usize,
        grad_scale: f32,
    );

    // ---- fused inference steps ------------------------------------------
    /// RMSNorm, the q/k/v W1.58A8 products, RoPE on q and k and the
    /// KV-cache append as one op (see [`fused`]); the default is the
    /// reference composition [`fused::attn_in_unfused`].
    fn attn_in(&self, a: fused::AttnIn<'_, Self>) {
        fused::attn_in_unfused(self, a)
    }
    /// `out = residual + W · rmsnorm(x)` (the o and down projections with
    /// their residual adds); default [`fused::norm_ternary_residual_unfused`].
    fn norm_ternary_residual(
        &self,
        norm: fused::NormIn<'_, Self>,
        w: &Self::Ternary,
        residual: &Self::Buf,
        out: &mut Self::Buf,
    ) {
        fused::norm_ternary_residual_unfused(self, norm, w, residual, out)
    }
    /// RMSNorm, the gate and up products and the gated activation as one
    /// op; default [`fused::ffn_in_unfused`].
    fn ffn_in(&self, a: fused::FfnIn<'_, Self>) {
        fused::ffn_in_unfused(self, a)
    }

    /// Greedy choice per row of `x [rows, cols]`: `out[r]` = the index of
    /// the row's largest value, the first one on ties; NaN never wins over
    /// a number (a row of NaN gives its last index), as a sequential scan
    /// with `x > best || best.is_nan()` does. With `hist = (h, at)` the
    /// indices are also written to `h[at + r]` (a decode loop's token
    /// history, kept on the device).
    fn argmax(
        &self,
        x: &Self::Buf,
        rows: usize,
        cols: usize,
        out: &mut Self::Ids,
        hist: Option<(&mut Self::Ids, usize)>,
    );

    // ---- optimizer -------------------------------------------------------
    /// One decoupled-weight-decay Adam step (PyTorch `AdamW` semantics):
    /// `p -= lr * wd * p; m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
    /// p -= lr * (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps)`.
    fn adamw(
        &self,
        p: &mut Self::Buf,
        g: &Self::Buf,
        m: &mut Self::Buf,
        v: &mut Self::Buf,
        h: AdamW,
    );
    /// [`Backend::adamw`] with the one hyper-parameter set `h` on every
    /// tensor of `ts` (all the adapter tensors of a LoRA step): a GPU runs
    /// them in one dispatch (or a few, as its binding limits allow). The
    /// result is bit-identical to the per-tensor op; the default is that
    /// loop ([`multi::adamw_multi_unfused`]).
    fn adamw_multi(&self, ts: &mut [multi::AdamWTensor<'_, Self>], h: AdamW) {
        multi::adamw_multi_unfused(self, ts, h)
    }

    /// Several independent [`Backend::matmul`] products (see
    /// [`multi::Product`]): the LoRA products of projections that share
    /// their input (q, k, v; gate, up) and their gradient products, in one
    /// dispatch on a GPU. Float path: each `c` equals [`Backend::matmul`]'s
    /// within its error budget (the summation order may differ); the
    /// default is that loop ([`multi::matmul_many_unfused`]).
    fn matmul_many(&self, ps: &mut [multi::Product<'_, Self>]) {
        multi::matmul_many_unfused(self, ps)
    }
}
