//! One transformer block's forward and backward, shared by the LoRA trainer
//! and the QAT pretrainer. What differs between them — what a projection
//! computes, where its gradients go, whether norm weights train — comes in
//! through [`BlockHooks`].

use tern_backend::{AttnDims, Backend, BackendError};
use tern_model::{BitNetConfig, Model, Proj};

/// Which of a block's four RMSNorms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Norm {
    /// `input_layernorm`
    Attn,
    /// `attn_sub_norm`
    AttnSub,
    /// `post_attention_layernorm`
    Ffn,
    /// `ffn_sub_norm`
    FfnSub,
}

impl Norm {
    pub(crate) fn weight<B: Backend>(self, layer: &tern_model::model::Layer<B>) -> &B::Buf {
        match self {
            Norm::Attn => &layer.attn_norm,
            Norm::AttnSub => &layer.attn_sub_norm,
            Norm::Ffn => &layer.ffn_norm,
            Norm::FfnSub => &layer.ffn_sub_norm,
        }
    }
}

/// What a trainer plugs into the shared block.
pub(crate) trait BlockHooks<B: Backend> {
    type Error: From<BackendError>;
    fn model(&self) -> &Model<B>;
    /// `y = projection p of layer l applied to x` (`rows` rows).
    fn proj_fwd(
        &self,
        l: usize,
        p: Proj,
        x: &B::Buf,
        y: &mut B::Buf,
        rows: usize,
    ) -> Result<(), Self::Error>;
    /// What the projections reading `x` need for their parameter gradients
    /// besides `x` itself, computed once per shared input (`None`: nothing).
    fn grad_input(
        &self,
        x: &B::Buf,
        rows: usize,
        cols: usize,
    ) -> Result<Option<B::Buf>, Self::Error>;
    /// Backward of one projection: write (or, with `accumulate`, add) `dx`
    /// and accumulate parameter gradients. `xg` is what [`Self::grad_input`]
    /// returned for `x`.
    #[allow(clippy::too_many_arguments)]
    fn proj_bwd(
        &mut self,
        l: usize,
        p: Proj,
        x: &B::Buf,
        xg: Option<&B::Buf>,
        dy: &B::Buf,
        dx: &mut B::Buf,
        rows: usize,
        accumulate: bool,
    ) -> Result<(), Self::Error>;
    /// RMSNorm backward of norm `n` of layer `l`, writing `dx` and (when the
    /// norm trains) accumulating its weight gradient.
    #[allow(clippy::too_many_arguments)]
    fn norm_bwd(
        &mut self,
        l: usize,
        n: Norm,
        x: &B::Buf,
        rstd: &B::Buf,
        dy: &B::Buf,
        dx: &mut B::Buf,
        rows: usize,
        dim: usize,
    );
}

/// Activations of one block, recomputed from its input.
pub(crate) struct BlockActs<B: Backend> {
    n1: B::Buf,
    rstd1: B::Buf,
    q: B::Buf,
    k: B::Buf,
    v: B::Buf,
    att: B::Buf,
    lse: B::Buf,
    att_n: B::Buf,
    rstd2: B::Buf,
    h: B::Buf,
    n2: B::Buf,
    rstd3: B::Buf,
    g: B::Buf,
    u: B::Buf,
    a: B::Buf,
    a_n: B::Buf,
    rstd4: B::Buf,
    /// The block's output.
    pub(crate) out: B::Buf,
}

/// Causal self-attention over `batch` sequences of `seq` tokens, no cache.
pub(crate) fn dims(cfg: &BitNetConfig, batch: usize, seq: usize) -> AttnDims {
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

/// Forward of block `l` on `x` (`[batch * seq, hidden]`), keeping what the
/// backward needs.
pub(crate) fn forward<B: Backend, H: BlockHooks<B>>(
    hk: &H,
    l: usize,
    x: &B::Buf,
    pos: &B::Ids,
    batch: usize,
    seq: usize,
) -> Result<BlockActs<B>, H::Error> {
    let model = hk.model();
    let be = &model.backend;
    let cfg = &model.cfg;
    let layer = &model.layers[l];
    let rows = batch * seq;
    let (h, f) = (cfg.hidden_size, cfg.intermediate_size);
    let (qd, kvd) = (cfg.q_dim(), cfg.kv_dim());
    let (nh, nkv, hd) = (cfg.num_attention_heads, cfg.n_kv_heads(), cfg.head_dim());
    let eps = cfg.rms_norm_eps;
    let mut a = BlockActs {
        n1: be.alloc(rows * h)?,
        rstd1: be.alloc(rows)?,
        q: be.alloc(rows * qd)?,
        k: be.alloc(rows * kvd)?,
        v: be.alloc(rows * kvd)?,
        att: be.alloc(rows * qd)?,
        lse: be.alloc(batch * nh * seq)?,
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
    };
    be.rmsnorm(x, &layer.attn_norm, &mut a.n1, &mut a.rstd1, rows, h, eps);
    hk.proj_fwd(l, Proj::Q, &a.n1, &mut a.q, rows)?;
    hk.proj_fwd(l, Proj::K, &a.n1, &mut a.k, rows)?;
    hk.proj_fwd(l, Proj::V, &a.n1, &mut a.v, rows)?;
    be.rope(&mut a.q, pos, rows, nh, hd, cfg.rope_theta, false);
    be.rope(&mut a.k, pos, rows, nkv, hd, cfg.rope_theta, false);
    be.attention(
        &a.q,
        &a.k,
        &a.v,
        &mut a.att,
        &mut a.lse,
        dims(cfg, batch, seq),
    );
    be.rmsnorm(
        &a.att,
        &layer.attn_sub_norm,
        &mut a.att_n,
        &mut a.rstd2,
        rows,
        qd,
        eps,
    );
    hk.proj_fwd(l, Proj::O, &a.att_n, &mut a.h, rows)?;
    be.axpy(1.0, x, &mut a.h);
    be.rmsnorm(&a.h, &layer.ffn_norm, &mut a.n2, &mut a.rstd3, rows, h, eps);
    hk.proj_fwd(l, Proj::Gate, &a.n2, &mut a.g, rows)?;
    hk.proj_fwd(l, Proj::Up, &a.n2, &mut a.u, rows)?;
    be.gate(&a.g, &a.u, &mut a.a, cfg.hidden_act.activation());
    be.rmsnorm(
        &a.a,
        &layer.ffn_sub_norm,
        &mut a.a_n,
        &mut a.rstd4,
        rows,
        f,
        eps,
    );
    hk.proj_fwd(l, Proj::Down, &a.a_n, &mut a.out, rows)?;
    be.axpy(1.0, &a.h, &mut a.out);
    Ok(a)
}

/// Backward of block `l`: recompute its activations from its input `x`,
/// then from the gradient at its output return the gradient at its input.
/// Parameter gradients accumulate through the hooks.
pub(crate) fn backward<B: Backend, H: BlockHooks<B>>(
    hk: &mut H,
    l: usize,
    x: &B::Buf,
    d_out: &B::Buf,
    pos: &B::Ids,
    batch: usize,
    seq: usize,
) -> Result<B::Buf, H::Error> {
    let a = forward(&*hk, l, x, pos, batch, seq)?;
    let cfg = hk.model().cfg.clone();
    let rows = batch * seq;
    let (h, f) = (cfg.hidden_size, cfg.intermediate_size);
    let (qd, kvd) = (cfg.q_dim(), cfg.kv_dim());
    let (nh, nkv, hd) = (cfg.num_attention_heads, cfg.n_kv_heads(), cfg.head_dim());
    // every buffer below is an op's output, written before it is read
    let zeros = |hk: &H, n: usize| hk.model().backend.alloc(n);

    // out = h + down(ffn_sub_norm(act(g) * u))
    let mut d_an = zeros(hk, rows * f)?;
    let xg = hk.grad_input(&a.a_n, rows, f)?;
    hk.proj_bwd(
        l,
        Proj::Down,
        &a.a_n,
        xg.as_ref(),
        d_out,
        &mut d_an,
        rows,
        false,
    )?;
    let mut d_a = zeros(hk, rows * f)?;
    hk.norm_bwd(l, Norm::FfnSub, &a.a, &a.rstd4, &d_an, &mut d_a, rows, f);
    let (mut dg, mut du) = (zeros(hk, rows * f)?, zeros(hk, rows * f)?);
    let act = cfg.hidden_act.activation();
    hk.model()
        .backend
        .gate_backward(&a.g, &a.u, &d_a, &mut dg, &mut du, act);
    let mut d_n2 = zeros(hk, rows * h)?;
    let xg = hk.grad_input(&a.n2, rows, h)?;
    hk.proj_bwd(
        l,
        Proj::Gate,
        &a.n2,
        xg.as_ref(),
        &dg,
        &mut d_n2,
        rows,
        false,
    )?;
    hk.proj_bwd(l, Proj::Up, &a.n2, xg.as_ref(), &du, &mut d_n2, rows, true)?;
    let mut dh = zeros(hk, rows * h)?;
    hk.norm_bwd(l, Norm::Ffn, &a.h, &a.rstd3, &d_n2, &mut dh, rows, h);
    hk.model().backend.axpy(1.0, d_out, &mut dh);

    // h = x + o_proj(attn_sub_norm(attention(rope(q), rope(k), v)))
    let mut d_attn = zeros(hk, rows * qd)?;
    let xg = hk.grad_input(&a.att_n, rows, qd)?;
    hk.proj_bwd(
        l,
        Proj::O,
        &a.att_n,
        xg.as_ref(),
        &dh,
        &mut d_attn,
        rows,
        false,
    )?;
    let mut d_att = zeros(hk, rows * qd)?;
    hk.norm_bwd(
        l,
        Norm::AttnSub,
        &a.att,
        &a.rstd2,
        &d_attn,
        &mut d_att,
        rows,
        qd,
    );
    let (mut dq, mut dk, mut dv) = (
        zeros(hk, rows * qd)?,
        zeros(hk, rows * kvd)?,
        zeros(hk, rows * kvd)?,
    );
    {
        let be = &hk.model().backend;
        be.attention_backward(
            &a.q,
            &a.k,
            &a.v,
            &a.att,
            &a.lse,
            &d_att,
            &mut dq,
            &mut dk,
            &mut dv,
            dims(&cfg, batch, seq),
        );
        be.rope(&mut dq, pos, rows, nh, hd, cfg.rope_theta, true);
        be.rope(&mut dk, pos, rows, nkv, hd, cfg.rope_theta, true);
    }
    let mut d_n1 = zeros(hk, rows * h)?;
    let xg = hk.grad_input(&a.n1, rows, h)?;
    hk.proj_bwd(l, Proj::Q, &a.n1, xg.as_ref(), &dq, &mut d_n1, rows, false)?;
    hk.proj_bwd(l, Proj::K, &a.n1, xg.as_ref(), &dk, &mut d_n1, rows, true)?;
    hk.proj_bwd(l, Proj::V, &a.n1, xg.as_ref(), &dv, &mut d_n1, rows, true)?;
    let mut dx = zeros(hk, rows * h)?;
    hk.norm_bwd(l, Norm::Attn, x, &a.rstd1, &d_n1, &mut dx, rows, h);
    hk.model().backend.axpy(1.0, &dh, &mut dx);
    Ok(dx)
}
