//! LoRA training over the backend trait: explicit forward and backward per
//! block with activation checkpointing.
//!
//! The forward keeps only each block's input (`[rows, hidden]` per layer);
//! the backward recomputes one block's activations from it, so memory stays
//! near packed weights + adapter state + one block's activations.

use crate::adapter::{Adapter, LoraConfig, LoraError, ProjKey, TensorPairs};
use crate::block::{self, BlockHooks, Norm};
use std::collections::BTreeMap;
use tern_backend::{AdamW, Backend, Gemm};
use tern_model::model::{ActQuant, Layer};
use tern_model::{Model, Proj};

/// One adapter pair on the device with its gradients and AdamW moments.
struct Param<B: Backend> {
    layer: usize,
    proj: Proj,
    /// `[r, in]`
    a: B::Buf,
    /// `[out, r]`
    b: B::Buf,
    ga: B::Buf,
    gb: B::Buf,
    ma: B::Buf,
    va: B::Buf,
    mb: B::Buf,
    vb: B::Buf,
}

/// AdamW state of every adapter tensor: first and second moments in the
/// adapter's `(A, B)` layout, and the number of steps taken.
#[derive(Clone, Debug, PartialEq)]
pub struct OptimizerState {
    pub step: u32,
    pub m: TensorPairs,
    pub v: TensorPairs,
}

/// Loss of one forward (and backward) pass.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepStats {
    /// Sum of per-token cross-entropy over the unmasked targets.
    pub loss_sum: f64,
    /// Number of unmasked targets.
    pub n_tokens: usize,
}

impl StepStats {
    pub fn mean(&self) -> f64 {
        self.loss_sum / self.n_tokens.max(1) as f64
    }
}

/// Trains a LoRA adapter on a frozen model.
pub struct Trainer<'m, B: Backend> {
    model: &'m Model<B>,
    cfg: LoraConfig,
    act_quant: ActQuant,
    params: Vec<Param<B>>,
    index: BTreeMap<(usize, ProjKey), usize>,
    step: u32,
    /// Seed of the LoRA dropout masks.
    seed: u64,
    /// `forward_backward` calls with dropout so far: each gets fresh masks.
    calls: u64,
    /// Dropout active in the current call (training passes only).
    dropout_on: bool,
    /// The gradient buffers still hold the last step's values (the optimizer
    /// step does not clear them): the next backward overwrites them instead
    /// of accumulating, and readers see zeros. Saves a dispatch per tensor
    /// per step.
    grads_stale: bool,
}

fn gemm(m: usize, k: usize, n: usize, trans_a: bool, trans_b: bool, alpha: f32, beta: f32) -> Gemm {
    Gemm {
        m,
        k,
        n,
        trans_a,
        trans_b,
        alpha,
        beta,
    }
}

impl<'m, B: Backend> Trainer<'m, B> {
    /// Put `adapter` on the model's device, with zero gradients and moments.
    pub fn new(
        model: &'m Model<B>,
        adapter: &Adapter,
        act_quant: ActQuant,
    ) -> Result<Self, LoraError> {
        adapter.check(&model.cfg)?;
        let be = &model.backend;
        let mut params = Vec::new();
        let mut index = BTreeMap::new();
        for (&(layer, key), (a, b)) in &adapter.tensors {
            index.insert((layer, key), params.len());
            params.push(Param {
                layer,
                proj: key.proj(),
                a: be.upload(a)?,
                b: be.upload(b)?,
                ga: be.zeros(a.len())?,
                gb: be.zeros(b.len())?,
                ma: be.zeros(a.len())?,
                va: be.zeros(a.len())?,
                mb: be.zeros(b.len())?,
                vb: be.zeros(b.len())?,
            });
        }
        Ok(Trainer {
            model,
            cfg: adapter.cfg.clone(),
            act_quant,
            params,
            index,
            step: 0,
            seed: 0,
            calls: 0,
            dropout_on: false,
            grads_stale: false,
        })
    }

    /// Seed the LoRA dropout masks (`seed`, and the number of training
    /// passes already made, for resuming).
    pub fn set_dropout_state(&mut self, seed: u64, calls: u64) {
        self.seed = seed;
        self.calls = calls;
    }

    /// `(seed, calls)` of the dropout masks, for checkpoints.
    pub fn dropout_state(&self) -> (u64, u64) {
        (self.seed, self.calls)
    }

    /// The dropout seed of projection `p` in layer `l` for the current pass.
    fn mask_seed(&self, l: usize, p: Proj) -> u64 {
        let mut h = self.seed ^ 0x243F_6A88_85A3_08D3;
        for v in [self.calls, l as u64, ProjKey::of(p).0 as u64] {
            h = (h ^ v).wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(29);
        }
        h
    }

    /// The LoRA branch's input: `x`, or `dropout(x)` in a training pass.
    fn lora_input<'b>(
        &self,
        l: usize,
        p: Proj,
        x: &'b B::Buf,
        scratch: &'b mut Option<B::Buf>,
    ) -> Result<&'b B::Buf, LoraError> {
        if !self.dropout_on || self.cfg.dropout == 0.0 {
            return Ok(x);
        }
        let be = self.be();
        let mut xd = be.alloc(be.len(x))?;
        be.dropout(x, &mut xd, self.cfg.dropout, self.mask_seed(l, p));
        Ok(scratch.insert(xd))
    }

    /// Optimizer steps taken.
    pub fn steps(&self) -> u32 {
        self.step
    }

    fn be(&self) -> &B {
        &self.model.backend
    }

    fn param(&self, layer: usize, p: Proj) -> Option<&Param<B>> {
        self.index
            .get(&(layer, ProjKey::of(p)))
            .map(|&i| &self.params[i])
    }

    fn weight(layer: &Layer<B>, p: Proj) -> &B::Ternary {
        match p {
            Proj::Q => &layer.q,
            Proj::K => &layer.k,
            Proj::V => &layer.v,
            Proj::O => &layer.o,
            Proj::Gate => &layer.gate,
            Proj::Up => &layer.up,
            Proj::Down => &layer.down,
        }
    }

    fn check_batch(
        &self,
        tokens: &[u32],
        targets: &[u32],
        batch: usize,
        seq: usize,
    ) -> Result<(), LoraError> {
        let vocab = self.model.cfg.vocab_size as u32;
        if batch == 0 || seq == 0 || tokens.len() != batch * seq || targets.len() != tokens.len() {
            return Err(LoraError::Config(format!(
                "batch of {} tokens / {} targets does not match {batch} x {seq}",
                tokens.len(),
                targets.len()
            )));
        }
        if let Some(t) = tokens
            .iter()
            .chain(targets.iter().filter(|&&t| t != u32::MAX))
            .find(|&&t| t >= vocab)
        {
            return Err(LoraError::Config(format!(
                "token id {t} is outside the vocabulary ({vocab})"
            )));
        }
        Ok(())
    }

    /// Forward, loss and (when `grad_scale` is given) backward of one
    /// micro-batch of `batch` sequences of `seq` tokens. `targets[i]` is the
    /// token expected after `tokens[i]`, or `u32::MAX` to ignore the position.
    /// Adapter gradients accumulate `grad_scale · d(loss_sum)`; pass
    /// `1 / n_tokens` of the whole (accumulated) batch for a mean loss.
    pub fn forward_backward(
        &mut self,
        tokens: &[u32],
        targets: &[u32],
        batch: usize,
        seq: usize,
        grad_scale: Option<f32>,
    ) -> Result<StepStats, LoraError> {
        self.check_batch(tokens, targets, batch, seq)?;
        // Dropout only in training passes; every training pass draws new masks.
        self.dropout_on = grad_scale.is_some() && self.cfg.dropout > 0.0;
        let result = self.forward_backward_inner(tokens, targets, batch, seq, grad_scale);
        if self.dropout_on {
            self.calls += 1;
        }
        if grad_scale.is_some() && result.is_ok() {
            // every adapter tensor received its gradient in this backward
            self.grads_stale = false;
        }
        self.dropout_on = false;
        result
    }

    fn forward_backward_inner(
        &mut self,
        tokens: &[u32],
        targets: &[u32],
        batch: usize,
        seq: usize,
        grad_scale: Option<f32>,
    ) -> Result<StepStats, LoraError> {
        let model = self.model;
        let be = &model.backend;
        let cfg = &model.cfg;
        let rows = batch * seq;
        let (h, vocab) = (cfg.hidden_size, cfg.vocab_size);
        let ids = be.upload_ids(tokens)?;
        let tgt = be.upload_ids(targets)?;
        let positions: Vec<u32> = (0..rows).map(|r| (r % seq) as u32).collect();
        let pos = be.upload_ids(&positions)?;

        // Forward, keeping each block's input (the checkpoints).
        let mut xs: Vec<B::Buf> = Vec::with_capacity(model.layers.len() + 1);
        let mut x0 = be.alloc(rows * h)?;
        be.embedding(&model.embed, &ids, &mut x0, h);
        xs.push(x0);
        for l in 0..model.layers.len() {
            let acts = block::forward(&*self, l, &xs[l], &pos, batch, seq)?;
            xs.push(acts.out);
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
        let head = model.lm_head.as_ref().unwrap_or(&model.embed);
        let mut logits = be.alloc(rows * vocab)?;
        be.matmul(
            &xn,
            head,
            &mut logits,
            gemm(rows, h, vocab, false, true, 1.0, 0.0),
        );
        let mut loss = be.alloc(rows)?;
        let n_tokens = targets.iter().filter(|&&t| t != u32::MAX).count();
        let Some(scale) = grad_scale else {
            be.cross_entropy(&logits, &tgt, &mut loss, None, rows, vocab, 1.0);
            let loss_sum = be.download(&loss)?.iter().map(|&v| v as f64).sum();
            return Ok(StepStats { loss_sum, n_tokens });
        };
        let mut dlogits = be.zeros(rows * vocab)?;
        be.cross_entropy(
            &logits,
            &tgt,
            &mut loss,
            Some(&mut dlogits),
            rows,
            vocab,
            scale,
        );
        drop(logits);
        let mut dxn = be.alloc(rows * h)?;
        be.matmul(
            &dlogits,
            head,
            &mut dxn,
            gemm(rows, vocab, h, false, false, 1.0, 0.0),
        );
        drop(dlogits);
        let mut dx = be.alloc(rows * h)?;
        be.rmsnorm_backward(x_last, &model.norm, &rstd, &dxn, &mut dx, None, rows, h);
        for l in (0..model.layers.len()).rev() {
            dx = block::backward(self, l, &xs[l], &dx, &pos, batch, seq)?;
        }
        let loss_sum = be.download(&loss)?.iter().map(|&v| v as f64).sum();
        Ok(StepStats { loss_sum, n_tokens })
    }

    /// Global L2 norm of the accumulated adapter gradients.
    pub fn grad_norm(&self) -> Result<f32, LoraError> {
        if self.grads_stale {
            return Ok(0.0);
        }
        let be = self.be();
        let mut sums = be.zeros(2 * self.params.len())?;
        for (i, p) in self.params.iter().enumerate() {
            be.sum_squares(&p.ga, &mut sums, 2 * i);
            be.sum_squares(&p.gb, &mut sums, 2 * i + 1);
        }
        let total: f64 = be.download(&sums)?.iter().map(|&v| v as f64).sum();
        Ok(total.sqrt() as f32)
    }

    /// Scale gradients so their global norm is at most `max_norm`
    /// (`clip_grad_norm_`: factor `max_norm / (norm + 1e-6)`, capped at 1).
    /// Returns the norm before clipping.
    pub fn clip_grad_norm(&mut self, max_norm: f32) -> Result<f32, LoraError> {
        let norm = self.grad_norm()?;
        let coef = max_norm / (norm + 1e-6);
        if coef < 1.0 {
            let be = &self.model.backend;
            for p in &mut self.params {
                be.scale(coef, &mut p.ga);
                be.scale(coef, &mut p.gb);
            }
        }
        Ok(norm)
    }

    /// One AdamW update of every adapter tensor, then zero the gradients.
    pub fn optimizer_step(&mut self, lr: f32, beta1: f32, beta2: f32, eps: f32, weight_decay: f32) {
        self.step += 1;
        let hp = AdamW {
            lr,
            beta1,
            beta2,
            eps,
            weight_decay,
            step: self.step,
        };
        let be = &self.model.backend;
        for p in &mut self.params {
            if self.grads_stale {
                // a second step without a backward in between: zero gradients
                be.scale(0.0, &mut p.ga);
                be.scale(0.0, &mut p.gb);
            }
            be.adamw(&mut p.a, &p.ga, &mut p.ma, &mut p.va, hp);
            be.adamw(&mut p.b, &p.gb, &mut p.mb, &mut p.vb, hp);
        }
        // cleared lazily: see `grads_stale`
        self.grads_stale = true;
    }

    /// Copy one `(A-like, B-like)` pair of buffers of every adapter tensor to
    /// the host, in the adapter's layout.
    fn download_pairs(
        &self,
        pick: impl Fn(&Param<B>) -> (&B::Buf, &B::Buf),
    ) -> Result<TensorPairs, LoraError> {
        let be = self.be();
        let mut out = BTreeMap::new();
        for p in &self.params {
            let (a, b) = pick(p);
            out.insert(
                (p.layer, ProjKey::of(p.proj)),
                (be.download(a)?, be.download(b)?),
            );
        }
        Ok(out)
    }

    /// The current adapter, copied to the host.
    pub fn adapter(&self) -> Result<Adapter, LoraError> {
        Ok(Adapter {
            cfg: self.cfg.clone(),
            tensors: self.download_pairs(|p| (&p.a, &p.b))?,
        })
    }

    /// AdamW moments `(m, v)` and the step count, copied to the host (for
    /// checkpoints). Each map has the adapter's layout.
    pub fn optimizer_state(&self) -> Result<OptimizerState, LoraError> {
        Ok(OptimizerState {
            step: self.step,
            m: self.download_pairs(|p| (&p.ma, &p.mb))?,
            v: self.download_pairs(|p| (&p.va, &p.vb))?,
        })
    }

    /// Restore what [`Self::optimizer_state`] saved (same adapter layout).
    pub fn load_optimizer_state(&mut self, st: &OptimizerState) -> Result<(), LoraError> {
        let be = &self.model.backend;
        for p in &mut self.params {
            let key = (p.layer, ProjKey::of(p.proj));
            let (Some((ma, mb)), Some((va, vb))) = (st.m.get(&key), st.v.get(&key)) else {
                return Err(LoraError::Config(format!(
                    "optimizer state has no moments for layer {} {}",
                    p.layer,
                    p.proj.hf_name()
                )));
            };
            for (dst, src) in [
                (&mut p.ma, ma),
                (&mut p.mb, mb),
                (&mut p.va, va),
                (&mut p.vb, vb),
            ] {
                if be.len(dst) != src.len() {
                    return Err(LoraError::Shape {
                        what: format!("optimizer moment of layer {} {}", p.layer, p.proj.hf_name()),
                        expected: vec![be.len(dst)],
                        got: vec![src.len()],
                    });
                }
                be.write(dst, 0, src);
            }
        }
        self.step = st.step;
        Ok(())
    }

    /// Gradients of every adapter tensor, copied to the host (for tests).
    pub fn gradients(&self) -> Result<Adapter, LoraError> {
        let mut tensors = self.download_pairs(|p| (&p.ga, &p.gb))?;
        if self.grads_stale {
            for (ga, gb) in tensors.values_mut() {
                ga.fill(0.0);
                gb.fill(0.0);
            }
        }
        Ok(Adapter {
            cfg: self.cfg.clone(),
            tensors,
        })
    }
}

impl<B: Backend> BlockHooks<B> for Trainer<'_, B> {
    type Error = LoraError;

    fn model(&self) -> &Model<B> {
        self.model
    }

    /// `y = BitLinear(x) + s · B (A x)` for `rows` rows.
    fn proj_fwd(
        &self,
        l: usize,
        p: Proj,
        x: &B::Buf,
        y: &mut B::Buf,
        rows: usize,
    ) -> Result<(), LoraError> {
        let be = self.be();
        let w = Self::weight(&self.model.layers[l], p);
        match self.act_quant {
            ActQuant::PerTokenInt8 => be.ternary_matmul(w, x, y, rows),
            ActQuant::None => be.ternary_matmul_float(w, x, y, rows),
        }
        if let Some(pr) = self.param(l, p) {
            let (out, inp) = p.shape(&self.model.cfg);
            let r = self.cfg.rank;
            let mut scratch = None;
            let x = self.lora_input(l, p, x, &mut scratch)?;
            let mut t = be.alloc(rows * r)?;
            be.matmul(x, &pr.a, &mut t, gemm(rows, inp, r, false, true, 1.0, 0.0));
            be.matmul(
                &t,
                &pr.b,
                y,
                gemm(rows, r, out, false, true, self.cfg.scaling(), 1.0),
            );
        }
        Ok(())
    }

    /// The LoRA gradients need only the branch input itself.
    fn grad_input(
        &self,
        _x: &B::Buf,
        _rows: usize,
        _cols: usize,
    ) -> Result<Option<B::Buf>, LoraError> {
        Ok(None)
    }

    /// Backward of the projection: writes (or, with `accumulate`, adds)
    /// `dx` and accumulates the adapter gradients.
    #[allow(clippy::too_many_arguments)]
    fn proj_bwd(
        &mut self,
        l: usize,
        p: Proj,
        x: &B::Buf,
        _xg: Option<&B::Buf>,
        dy: &B::Buf,
        dx: &mut B::Buf,
        rows: usize,
        accumulate: bool,
    ) -> Result<(), LoraError> {
        let (out, inp) = p.shape(&self.model.cfg);
        let r = self.cfg.rank;
        let s = self.cfg.scaling();
        let model = self.model;
        let be = &model.backend;
        let w = Self::weight(&model.layers[l], p);
        if accumulate {
            let mut tmp = be.alloc(rows * inp)?;
            be.ternary_matmul_backward(w, dy, &mut tmp, rows);
            be.axpy(1.0, &tmp, dx);
        } else {
            be.ternary_matmul_backward(w, dy, dx, rows);
        }
        if let Some(&i) = self.index.get(&(l, ProjKey::of(p))) {
            let mut scratch = None;
            let dropped = self.dropout_on && self.cfg.dropout > 0.0;
            let mask_seed = self.mask_seed(l, p);
            let xd = self.lora_input(l, p, x, &mut scratch)?;
            let pr = &self.params[i];
            let mut t = be.alloc(rows * r)?;
            be.matmul(xd, &pr.a, &mut t, gemm(rows, inp, r, false, true, 1.0, 0.0));
            // dt = s · dy B
            let mut dt = be.alloc(rows * r)?;
            be.matmul(dy, &pr.b, &mut dt, gemm(rows, out, r, false, false, s, 0.0));
            // dx += dropout'(dt A): the same mask on the way back.
            if dropped {
                let mut dxd = be.alloc(rows * inp)?;
                be.matmul(
                    &dt,
                    &pr.a,
                    &mut dxd,
                    gemm(rows, r, inp, false, false, 1.0, 0.0),
                );
                let mut masked = be.alloc(rows * inp)?;
                be.dropout(&dxd, &mut masked, self.cfg.dropout, mask_seed);
                be.axpy(1.0, &masked, dx);
            } else {
                be.matmul(&dt, &pr.a, dx, gemm(rows, r, inp, false, false, 1.0, 1.0));
            }
            let pr = &mut self.params[i];
            // dB += s · dyᵀ t ; dA += dtᵀ x_d (or = after an optimizer step)
            let acc = if self.grads_stale { 0.0 } else { 1.0 };
            be.matmul(dy, &t, &mut pr.gb, gemm(out, rows, r, true, false, s, acc));
            be.matmul(
                &dt,
                xd,
                &mut pr.ga,
                gemm(r, rows, inp, true, false, 1.0, acc),
            );
        }
        Ok(())
    }

    /// The norms are frozen: input gradient only.
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
    ) {
        let w = n.weight(&self.model.layers[l]);
        self.model
            .backend
            .rmsnorm_backward(x, w, rstd, dy, dx, None, rows, dim);
    }
}
