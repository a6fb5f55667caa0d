//! The transformer block: the one forward definition that inference, LoRA
//! training and quantization-aware training all run.
//!
//! Pre-norm, Llama-shaped, with BitNet's two extra sub-norms:
//! ```text
//! h   = x + o_proj(attn_sub_norm(attn(rope(q(n1)), rope(k(n1)), v(n1))))   n1 = input_layernorm(x)
//! out = h + down(ffn_sub_norm(act(gate(n2)) * up(n2)))                     n2 = post_attention_layernorm(h)
//! ```
//! What differs between the callers comes in three ways:
//! - how a projection runs: [`BlockHooks::project`] (inference: BitLinear
//!   plus any low-rank deltas; the LoRA trainer: BitLinear plus the adapter
//!   branch with dropout; QAT: BitLinear of the re-ternarized latent
//!   weights). [`bitlinear`] is the base every hook runs.
//! - where keys and values go: [`Attend`] (a KV cache that is appended to
//!   and attended over, or causal attention within the batch);
//! - what is kept: the caller owns the [`BlockActs`]. Inference reuses one
//!   set for every layer and decode step (no allocation); training keeps
//!   only each block's input and recomputes one block's activations for
//!   its backward (`tern_lora`), which reads them.

use crate::config::BitNetConfig;
use crate::keys::{Norm, Proj};
use crate::model::{ActQuant, Layer};
use crate::table::Table;
use tern_backend::fused::{AttnIn, FfnIn, NormIn, RopeDims};
use tern_backend::{AttnDims, Backend, BackendError, Gemm};

/// One projection call: which one, its packed weight and the row count.
pub struct Site<'a, B: Backend> {
    pub layer: usize,
    pub proj: Proj,
    pub weight: &'a B::Ternary,
    pub rows: usize,
}

impl<B: Backend> Clone for Site<'_, B> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<B: Backend> Copy for Site<'_, B> {}

/// What a caller plugs into the block.
pub trait BlockHooks<B: Backend> {
    type Error: From<BackendError>;
    /// Write `y` = projection `at` applied to `x` (`at.rows` rows).
    fn project(
        &mut self,
        be: &B,
        at: Site<'_, B>,
        x: &B::Buf,
        y: &mut B::Buf,
    ) -> Result<(), Self::Error>;

    /// The projections `ats` that all read `x` (q, k, v; gate, up), into
    /// `ys` in the same order, so that a hook can batch their work (the
    /// LoRA trainer's adapter products: one multi-tensor op for the group).
    /// Default: [`BlockHooks::project`] on each in order.
    fn project_many(
        &mut self,
        be: &B,
        ats: &[Site<'_, B>],
        x: &B::Buf,
        ys: &mut [&mut B::Buf],
    ) -> Result<(), Self::Error> {
        for (&at, y) in ats.iter().zip(ys.iter_mut()) {
            self.project(be, at, x, y)?;
        }
        Ok(())
    }

    /// Whether every projection of layer `layer` is the plain W1.58A8
    /// product (no deltas, no dropout), so that an inference step may run
    /// the backend's fused ops ([`tern_backend::fused`]) instead of calling
    /// [`BlockHooks::project`]. Default: no.
    fn fusable(&self, _layer: usize) -> bool {
        false
    }
}

/// `y = x · W_tᵀ · scale` for `rows` rows: BitNet's W1.58A8 product, or the
/// float-activation diagnostic mode.
pub fn bitlinear<B: Backend>(
    be: &B,
    mode: ActQuant,
    w: &B::Ternary,
    x: &B::Buf,
    y: &mut B::Buf,
    rows: usize,
) {
    match mode {
        ActQuant::PerTokenInt8 => be.ternary_matmul(w, x, y, rows),
        ActQuant::None => be.ternary_matmul_float(w, x, y, rows),
    }
}

/// Where the block's keys and values go.
pub enum Attend<'a, B: Backend> {
    /// Causal self-attention within each of `batch` sequences of `seq`
    /// tokens at positions `0..seq` (training).
    Causal { batch: usize, seq: usize },
    /// Append the new keys and values to a cache of `ctx` positions that
    /// already holds `n_past`, then attend over it (inference).
    Cache {
        k: &'a mut B::Buf,
        v: &'a mut B::Buf,
        n_past: usize,
        ctx: usize,
    },
}

/// Causal self-attention over `batch` sequences of `seq` tokens, no cache.
pub fn causal_dims(cfg: &BitNetConfig, batch: usize, seq: usize) -> AttnDims {
    AttnDims {
        batch,
        n_new: seq,
        n_past: 0,
        kv_len: seq,
        n_heads: cfg.num_attention_heads,
        n_kv_heads: cfg.n_kv_heads(),
        head_dim: cfg.head_dim(),
    }
}

/// Attention of `n_new` new rows over a cache of `ctx` positions holding
/// `n_past` earlier ones.
fn cache_dims(cfg: &BitNetConfig, n_new: usize, n_past: usize, ctx: usize) -> AttnDims {
    AttnDims {
        batch: 1,
        n_new,
        n_past,
        kv_len: ctx,
        n_heads: cfg.num_attention_heads,
        n_kv_heads: cfg.n_kv_heads(),
        head_dim: cfg.head_dim(),
    }
}

/// Every activation of one block for `rows` tokens; each is an op's output,
/// written before it is read.
pub struct BlockActs<B: Backend> {
    pub rows: usize,
    /// `input_layernorm(x)` and its inverse RMS.
    pub n1: B::Buf,
    pub rstd1: B::Buf,
    /// Rotated queries and keys, values.
    pub q: B::Buf,
    pub k: B::Buf,
    pub v: B::Buf,
    /// Attention output and its log-sum-exp per head and row.
    pub att: B::Buf,
    pub lse: B::Buf,
    /// `attn_sub_norm(att)`.
    pub att_n: B::Buf,
    pub rstd2: B::Buf,
    /// The residual after attention.
    pub h: B::Buf,
    /// `post_attention_layernorm(h)`.
    pub n2: B::Buf,
    pub rstd3: B::Buf,
    /// Gate and up projections, `act(g) * u`, and its `ffn_sub_norm`.
    pub g: B::Buf,
    pub u: B::Buf,
    pub a: B::Buf,
    pub a_n: B::Buf,
    pub rstd4: B::Buf,
    /// The block's output.
    pub out: B::Buf,
}

impl<B: Backend> BlockActs<B> {
    pub fn new(be: &B, cfg: &BitNetConfig, rows: usize) -> Result<Self, BackendError> {
        let (h, f) = (cfg.hidden_size, cfg.intermediate_size);
        let (qd, kvd) = (cfg.q_dim(), cfg.kv_dim());
        Ok(BlockActs {
            rows,
            n1: be.alloc(rows * h)?,
            rstd1: be.alloc(rows)?,
            q: be.alloc(rows * qd)?,
            k: be.alloc(rows * kvd)?,
            v: be.alloc(rows * kvd)?,
            att: be.alloc(rows * qd)?,
            lse: be.alloc(cfg.num_attention_heads * rows)?,
            att_n: be.alloc(rows * qd)?,
            rstd2: be.alloc(rows)?,
            h: be.alloc(rows * h)?,
            n2: be.alloc(rows * h)?,
            rstd3: be.alloc(rows)?,
            g: be.alloc(rows * f)?,
            u: be.alloc(rows * f)?,
            a: be.alloc(rows * f)?,
            a_n: be.alloc(rows * f)?,
            rstd4: be.alloc(rows)?,
            out: be.alloc(rows * h)?,
        })
    }
}

/// The forward of layer `l` (weights `layer`) on `x` (`[acts.rows, hidden]`
/// at positions `pos`), writing every activation into `acts` and the
/// block's output into `acts.out`.
#[allow(clippy::too_many_arguments)]
pub fn forward<B: Backend, H: BlockHooks<B> + ?Sized>(
    be: &B,
    cfg: &BitNetConfig,
    l: usize,
    layer: &Layer<B>,
    hooks: &mut H,
    x: &B::Buf,
    pos: &B::Ids,
    attend: Attend<'_, B>,
    a: &mut BlockActs<B>,
) -> Result<(), H::Error> {
    let rows = a.rows;
    let kvd = cfg.kv_dim();
    let (nh, nkv, hd) = (cfg.num_attention_heads, cfg.n_kv_heads(), cfg.head_dim());
    let at = |p: Proj| Site {
        layer: l,
        proj: p,
        weight: layer.proj(p),
        rows,
    };

    let norm = |n: Norm, x: &B::Buf, y: &mut B::Buf, rstd: &mut B::Buf| {
        be.rmsnorm(
            x,
            layer.norm(n),
            y,
            rstd,
            rows,
            n.dim(cfg),
            cfg.rms_norm_eps,
        );
    };

    let attend = match attend {
        Attend::Cache { k, v, n_past, ctx } if hooks.fusable(l) => {
            forward_fused(be, cfg, layer, x, pos, (k, v, n_past, ctx), a);
            return Ok(());
        }
        other => other,
    };
    norm(Norm::Attn, x, &mut a.n1, &mut a.rstd1);
    let qkv = [at(Proj::Q), at(Proj::K), at(Proj::V)];
    hooks.project_many(be, &qkv, &a.n1, &mut [&mut a.q, &mut a.k, &mut a.v])?;
    be.rope(&mut a.q, pos, rows, nh, hd, cfg.rope_theta, false);
    be.rope(&mut a.k, pos, rows, nkv, hd, cfg.rope_theta, false);
    match attend {
        Attend::Causal { batch, seq } => {
            let dims = causal_dims(cfg, batch, seq);
            be.attention(&a.q, &a.k, &a.v, &mut a.att, &mut a.lse, dims);
        }
        Attend::Cache { k, v, n_past, ctx } => {
            be.copy_range(&a.k, 0, k, n_past * kvd, rows * kvd);
            be.copy_range(&a.v, 0, v, n_past * kvd, rows * kvd);
            let dims = cache_dims(cfg, rows, n_past, ctx);
            be.attention(&a.q, k, v, &mut a.att, &mut a.lse, dims);
        }
    }
    norm(Norm::AttnSub, &a.att, &mut a.att_n, &mut a.rstd2);
    hooks.project(be, at(Proj::O), &a.att_n, &mut a.h)?;
    be.axpy(1.0, x, &mut a.h);

    norm(Norm::Ffn, &a.h, &mut a.n2, &mut a.rstd3);
    let gate_up = [at(Proj::Gate), at(Proj::Up)];
    hooks.project_many(be, &gate_up, &a.n2, &mut [&mut a.g, &mut a.u])?;
    be.gate(&a.g, &a.u, &mut a.a, cfg.hidden_act.activation());
    norm(Norm::FfnSub, &a.a, &mut a.a_n, &mut a.rstd4);
    hooks.project(be, at(Proj::Down), &a.a_n, &mut a.out)?;
    be.axpy(1.0, &a.h, &mut a.out);
    Ok(())
}

/// [`forward`] with a KV cache `(k, v, n_past, ctx)` through the backend's
/// fused ops: five calls (four fused ops and the attention) instead of some
/// twenty. Only `a.out` (and `a.q`, `a.att`, `a.h`, `a.a`) is meaningful
/// afterwards; the other activations are the fused ops' scratch.
fn forward_fused<B: Backend>(
    be: &B,
    cfg: &BitNetConfig,
    layer: &Layer<B>,
    x: &B::Buf,
    pos: &B::Ids,
    (kc, vc, n_past, ctx): (&mut B::Buf, &mut B::Buf, usize, usize),
    a: &mut BlockActs<B>,
) {
    let (rows, eps) = (a.rows, cfg.rms_norm_eps);
    let rope = RopeDims {
        n_heads: cfg.num_attention_heads,
        n_kv_heads: cfg.n_kv_heads(),
        head_dim: cfg.head_dim(),
        theta: cfg.rope_theta,
    };
    be.attn_in(AttnIn {
        norm: NormIn {
            x,
            weight: layer.norm(Norm::Attn),
            eps,
            rows,
            normed: &mut a.n1,
            rstd: &mut a.rstd1,
        },
        wq: layer.proj(Proj::Q),
        wk: layer.proj(Proj::K),
        wv: layer.proj(Proj::V),
        pos,
        rope,
        q: &mut a.q,
        k: &mut a.k,
        v: &mut a.v,
        k_cache: kc,
        v_cache: vc,
        n_past,
    });
    let dims = cache_dims(cfg, rows, n_past, ctx);
    be.attention(&a.q, kc, vc, &mut a.att, &mut a.lse, dims);
    let sub = NormIn {
        x: &a.att,
        weight: layer.norm(Norm::AttnSub),
        eps,
        rows,
        normed: &mut a.att_n,
        rstd: &mut a.rstd2,
    };
    be.norm_ternary_residual(sub, layer.proj(Proj::O), x, &mut a.h);
    be.ffn_in(FfnIn {
        norm: NormIn {
            x: &a.h,
            weight: layer.norm(Norm::Ffn),
            eps,
            rows,
            normed: &mut a.n2,
            rstd: &mut a.rstd3,
        },
        wg: layer.proj(Proj::Gate),
        wu: layer.proj(Proj::Up),
        act: cfg.hidden_act.activation(),
        g: &mut a.g,
        u: &mut a.u,
        out: &mut a.a,
    });
    let sub = NormIn {
        x: &a.a,
        weight: layer.norm(Norm::FfnSub),
        eps,
        rows,
        normed: &mut a.a_n,
        rstd: &mut a.rstd4,
    };
    be.norm_ternary_residual(sub, layer.proj(Proj::Down), &a.h, &mut a.out);
}

/// Logits `[rows, vocab]` of the final-normed hidden states `xn` through the
/// head (`[vocab, hidden]` in f32 or f16, the embedding when tied).
pub fn logits<B: Backend>(
    be: &B,
    cfg: &BitNetConfig,
    head: &Table<B>,
    xn: &B::Buf,
    out: &mut B::Buf,
    rows: usize,
) {
    let g = Gemm::new(rows, cfg.hidden_size, cfg.vocab_size).trans_b();
    head.matmul(be, xn, out, g);
}
