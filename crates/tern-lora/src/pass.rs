//! One training pass over a micro-batch, shared by the LoRA trainer and
//! the QAT pretrainer: the forward of [`tern_model::block`] with activation
//! checkpointing, the head and the cross-entropy loss, and the backward.
//!
//! The forward keeps only each block's input (`[rows, hidden]` per layer);
//! the backward recomputes one block's activations from it with the same
//! forward, so memory stays near the weights plus one block's activations.
//! What differs between the trainers comes through `TrainHooks`: how a
//! projection runs (its [`BlockHooks`]), which model parameters train
//! (`TrainHooks::grad`: the frozen LoRA base has none, QAT trains all),
//! and the backward of anything a projection adds (LoRA's branch).
//!
//! Backward of a projection `y = BitLinear(x)`: `dx = W_tᵀ·dy`
//! (straight-through on both quantizers); a trained latent weight gets
//! `dW += dyᵀ·x_fq` where `x_fq` is the fake-quantized activation the
//! product saw (`x` itself with float activations).

use crate::train::StepStats;
use tern_backend::{Backend, Gemm};
use tern_model::block::{self, Attend, BlockActs, BlockHooks, Site};
use tern_model::model::{ActQuant, Layer};
use tern_model::{Model, Norm, Param, Proj};

/// A micro-batch that does not fit the model.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    #[error("batch of {tokens} tokens / {targets} targets does not match {batch} x {seq}")]
    Shape {
        tokens: usize,
        targets: usize,
        batch: usize,
        seq: usize,
    },
    #[error("sequences of {seq} tokens exceed max_position_embeddings ({max})")]
    TooLong { seq: usize, max: usize },
    #[error("token id {id} is outside the vocabulary ({vocab})")]
    TokenOutOfRange { id: u32, vocab: usize },
}

/// What a trainer plugs into the pass.
pub(crate) trait TrainHooks<B: Backend>: BlockHooks<B> {
    /// The forward's activation mode.
    fn act_quant(&self) -> ActQuant;
    /// Does model parameter `key` train?
    fn trains(&self, key: Param) -> bool;
    /// The gradient of a trained model parameter, to accumulate into.
    fn grad(&mut self, key: Param) -> Option<&mut B::Buf>;
    /// Before the backward of the projections `projs` (`(proj, dy)`, all
    /// reading `x`, of layer `layer`): the work of their
    /// [`TrainHooks::extra_backward`] calls that does not touch `dx`, done
    /// at once for the group (LoRA: the adapters' gradient products as
    /// multi-tensor ops). Default: nothing.
    fn extra_prepare(
        &mut self,
        _be: &B,
        _layer: usize,
        _projs: &[(Proj, &B::Buf)],
        _x: &B::Buf,
        _rows: usize,
    ) -> Result<(), Self::Error> {
        Ok(())
    }
    /// Backward of what [`BlockHooks::project`] adds to the BitLinear
    /// (LoRA's branch): add its input gradient to `dx` and accumulate its
    /// own parameter gradients.
    fn extra_backward(
        &mut self,
        _be: &B,
        _at: Site<'_, B>,
        _x: &B::Buf,
        _dy: &B::Buf,
        _dx: &mut B::Buf,
    ) -> Result<(), Self::Error> {
        Ok(())
    }
}

/// `batch` sequences of `seq` tokens; `targets[i]` is the token expected
/// after `tokens[i]`, or `u32::MAX` to ignore the position.
#[derive(Clone, Copy, Debug)]
pub struct Batch<'a> {
    pub tokens: &'a [u32],
    pub targets: &'a [u32],
    pub batch: usize,
    pub seq: usize,
}

impl Batch<'_> {
    /// Refuse a batch the model cannot run.
    pub fn check(&self, cfg: &tern_model::BitNetConfig) -> Result<(), BatchError> {
        let (batch, seq) = (self.batch, self.seq);
        if batch == 0
            || seq == 0
            || self.tokens.len() != batch * seq
            || self.targets.len() != self.tokens.len()
        {
            return Err(BatchError::Shape {
                tokens: self.tokens.len(),
                targets: self.targets.len(),
                batch,
                seq,
            });
        }
        if seq > cfg.max_position_embeddings {
            return Err(BatchError::TooLong {
                seq,
                max: cfg.max_position_embeddings,
            });
        }
        let vocab = cfg.vocab_size;
        let targets = self.targets.iter().filter(|&&t| t != u32::MAX);
        if let Some(&id) = self
            .tokens
            .iter()
            .chain(targets)
            .find(|&&t| t as usize >= vocab)
        {
            return Err(BatchError::TokenOutOfRange { id, vocab });
        }
        Ok(())
    }
}

/// Forward, loss and (when `grad_scale` is given) backward of one
/// micro-batch; gradients accumulate `grad_scale · d(loss_sum)` through the
/// hooks. Returns the loss and, with `want_logits`, the logits
/// `[rows, vocab]`.
pub(crate) fn run<B: Backend, H: TrainHooks<B>>(
    model: &Model<B>,
    hk: &mut H,
    b: Batch<'_>,
    grad_scale: Option<f32>,
    want_logits: bool,
) -> Result<(StepStats, Option<Vec<f32>>), H::Error>
where
    H::Error: From<BatchError>,
{
    let cfg = &model.cfg;
    b.check(cfg)?;
    let be = &model.backend;
    let (batch, seq) = (b.batch, b.seq);
    let rows = batch * seq;
    let (h, vocab) = (cfg.hidden_size, cfg.vocab_size);
    let ids = be.upload_ids(b.tokens)?;
    let tgt = be.upload_ids(b.targets)?;
    let positions: Vec<u32> = (0..rows).map(|r| (r % seq) as u32).collect();
    let pos = be.upload_ids(&positions)?;

    // Forward, keeping each block's input (the checkpoints).
    let mut xs: Vec<B::Buf> = Vec::with_capacity(model.layers.len() + 1);
    let mut x0 = be.alloc(rows * h)?;
    model.embed.gather(be, &ids, &mut x0, h);
    xs.push(x0);
    let mut acts = BlockActs::new(be, cfg, rows)?;
    for (l, layer) in model.layers.iter().enumerate() {
        let attend = Attend::Causal { batch, seq };
        block::forward(be, cfg, l, layer, hk, &xs[l], &pos, attend, &mut acts)?;
        xs.push(std::mem::replace(&mut acts.out, be.alloc(rows * h)?));
    }
    let x_last = xs.last().expect("embedding output");
    let mut xn = be.alloc(rows * h)?;
    let mut rstd = be.alloc(rows)?;
    be.rmsnorm(
        x_last,
        &model.norm,
        &mut xn,
        &mut rstd,
        rows,
        h,
        cfg.rms_norm_eps,
    );
    let head = model.head();
    let mut logits = be.alloc(rows * vocab)?;
    block::logits(be, cfg, head, &xn, &mut logits, rows);
    let host_logits = if want_logits {
        Some(be.download(&logits)?)
    } else {
        None
    };
    let mut loss = be.alloc(rows)?;
    let n_tokens = b.targets.iter().filter(|&&t| t != u32::MAX).count();
    let Some(scale) = grad_scale else {
        be.cross_entropy(&logits, &tgt, &mut loss, None, rows, vocab, 1.0);
        let loss_sum = be.download(&loss)?.iter().map(|&v| v as f64).sum();
        return Ok((StepStats { loss_sum, n_tokens }, host_logits));
    };
    let mut dlogits = be.zeros(rows * vocab)?;
    let dl = Some(&mut dlogits);
    be.cross_entropy(&logits, &tgt, &mut loss, dl, rows, vocab, scale);
    drop(logits);
    let mut dxn = be.alloc(rows * h)?;
    // the head's input gradient, from the same table as its forward
    head.matmul(be, &dlogits, &mut dxn, Gemm::new(rows, vocab, h));
    // Head gradient: dlogitsᵀ · xn (into the embedding when tied).
    let head_key = if model.lm_head.is_some() {
        Param::Head
    } else {
        Param::Embed
    };
    if let Some(g) = hk.grad(head_key) {
        let gemm = Gemm::new(vocab, rows, h).trans_a().accumulate();
        be.matmul(&dlogits, &xn, g, gemm);
    }
    drop(dlogits);
    let mut dx = be.alloc(rows * h)?;
    let dw = hk.grad(Param::FinalNorm);
    be.rmsnorm_backward(x_last, &model.norm, &rstd, &dxn, &mut dx, dw, rows, h);
    for l in (0..model.layers.len()).rev() {
        dx = block_backward(model, hk, l, &xs[l], &dx, &pos, batch, seq, &mut acts)?;
    }
    if let Some(g) = hk.grad(Param::Embed) {
        be.embedding_backward(&ids, &dx, g, h);
    }
    let loss_sum = be.download(&loss)?.iter().map(|&v| v as f64).sum();
    Ok((StepStats { loss_sum, n_tokens }, host_logits))
}

/// Backward of block `l`: recompute its activations from its input `x`
/// into `a`, then from the gradient at its output return the gradient at
/// its input.
#[allow(clippy::too_many_arguments)]
fn block_backward<B: Backend, H: TrainHooks<B>>(
    model: &Model<B>,
    hk: &mut H,
    l: usize,
    x: &B::Buf,
    d_out: &B::Buf,
    pos: &B::Ids,
    batch: usize,
    seq: usize,
    a: &mut BlockActs<B>,
) -> Result<B::Buf, H::Error> {
    let (be, cfg, layer) = (&model.backend, &model.cfg, &model.layers[l]);
    block::forward(
        be,
        cfg,
        l,
        layer,
        hk,
        x,
        pos,
        Attend::Causal { batch, seq },
        a,
    )?;
    let rows = batch * seq;
    let (h, f) = (cfg.hidden_size, cfg.intermediate_size);
    let (qd, kvd) = (cfg.q_dim(), cfg.kv_dim());
    let (nh, nkv, hd) = (cfg.num_attention_heads, cfg.n_kv_heads(), cfg.head_dim());
    // every buffer below is an op's output, written before it is read
    let buf = |n: usize| be.alloc(n);
    let ps = Projs {
        be,
        cfg,
        layer,
        l,
        rows,
    };
    let norm = |hk: &mut H, n: Norm, x: &B::Buf, rstd: &B::Buf, dy: &B::Buf, dx: &mut B::Buf| {
        let dw = hk.grad(Param::Norm(l, n));
        let dim = n.dim(cfg);
        be.rmsnorm_backward(x, layer.norm(n), rstd, dy, dx, dw, rows, dim);
    };

    // out = h + down(ffn_sub_norm(act(g) * u))
    let mut d_an = buf(rows * f)?;
    ps.backward(hk, &[(Proj::Down, d_out)], &a.a_n, &mut d_an)?;
    let mut d_a = buf(rows * f)?;
    norm(hk, Norm::FfnSub, &a.a, &a.rstd4, &d_an, &mut d_a);
    let (mut dg, mut du) = (buf(rows * f)?, buf(rows * f)?);
    let act = cfg.hidden_act.activation();
    be.gate_backward(&a.g, &a.u, &d_a, &mut dg, &mut du, act);
    let mut d_n2 = buf(rows * h)?;
    ps.backward(hk, &[(Proj::Gate, &dg), (Proj::Up, &du)], &a.n2, &mut d_n2)?;
    let mut dh = buf(rows * h)?;
    norm(hk, Norm::Ffn, &a.h, &a.rstd3, &d_n2, &mut dh);
    be.axpy(1.0, d_out, &mut dh);

    // h = x + o_proj(attn_sub_norm(attention(rope(q), rope(k), v)))
    let mut d_attn = buf(rows * qd)?;
    ps.backward(hk, &[(Proj::O, &dh)], &a.att_n, &mut d_attn)?;
    let mut d_att = buf(rows * qd)?;
    norm(hk, Norm::AttnSub, &a.att, &a.rstd2, &d_attn, &mut d_att);
    let (mut dq, mut dk, mut dv) = (buf(rows * qd)?, buf(rows * kvd)?, buf(rows * kvd)?);
    let dims = block::causal_dims(cfg, batch, seq);
    #[rustfmt::skip]
    be.attention_backward(&a.q, &a.k, &a.v, &a.att, &a.lse, &d_att, &mut dq, &mut dk, &mut dv, dims);
    be.rope(&mut dq, pos, rows, nh, hd, cfg.rope_theta, true);
    be.rope(&mut dk, pos, rows, nkv, hd, cfg.rope_theta, true);
    let mut d_n1 = buf(rows * h)?;
    let qkv = [(Proj::Q, &dq), (Proj::K, &dk), (Proj::V, &dv)];
    ps.backward(hk, &qkv, &a.n1, &mut d_n1)?;
    let mut dx = buf(rows * h)?;
    norm(hk, Norm::Attn, x, &a.rstd1, &d_n1, &mut dx);
    be.axpy(1.0, &dh, &mut dx);
    Ok(dx)
}

/// The projections of one layer, for their backward.
struct Projs<'a, B: Backend> {
    be: &'a B,
    cfg: &'a tern_model::BitNetConfig,
    layer: &'a Layer<B>,
    l: usize,
    rows: usize,
}

impl<B: Backend> Projs<'_, B> {
    /// Backward of the projections `(p, dy)` that all read `x`: `dx` gets
    /// the sum of their input gradients; trained weights and the hooks'
    /// extras accumulate their gradients.
    fn backward<H: TrainHooks<B>>(
        &self,
        hk: &mut H,
        projs: &[(Proj, &B::Buf)],
        x: &B::Buf,
        dx: &mut B::Buf,
    ) -> Result<(), H::Error> {
        let (be, rows) = (self.be, self.rows);
        let cols = projs.first().map_or(0, |&(p, _)| p.shape(self.cfg).1);
        // What the weight gradients multiply, computed once for the shared
        // input: the fake-quantized activation under int8 activations.
        let trained = projs
            .iter()
            .any(|&(p, _)| hk.trains(Param::Proj(self.l, p)));
        let xq = match hk.act_quant() {
            ActQuant::PerTokenInt8 if trained => {
                let mut xq = be.alloc(rows * cols)?;
                be.fake_quant_act(x, &mut xq, rows, cols);
                Some(xq)
            }
            ActQuant::PerTokenInt8 | ActQuant::None => None,
        };
        hk.extra_prepare(be, self.l, projs, x, rows)?;
        for (i, &(p, dy)) in projs.iter().enumerate() {
            let w = self.layer.proj(p);
            if i == 0 {
                be.ternary_matmul_backward(w, dy, dx, rows);
            } else {
                let mut tmp = be.alloc(rows * cols)?;
                be.ternary_matmul_backward(w, dy, &mut tmp, rows);
                be.axpy(1.0, &tmp, dx);
            }
            let out = p.shape(self.cfg).0;
            if let Some(g) = hk.grad(Param::Proj(self.l, p)) {
                let gemm = Gemm::new(out, rows, cols).trans_a().accumulate();
                be.matmul(dy, xq.as_ref().unwrap_or(x), g, gemm);
            }
            let at = Site {
                layer: self.l,
                proj: p,
                weight: w,
                rows,
            };
            hk.extra_backward(be, at, x, dy, dx)?;
        }
        Ok(())
    }
}
