//! LoRA training over the backend trait: the shared training pass
//! ([`crate::pass`]) with the adapter branch as the projection hook.
//!
//! `y = BitLinear(x) + s · B (A dropout(x))`: the frozen base gets no
//! gradient; inputs receive `W_tᵀ · dy` and the adapter plain f32 matmul
//! gradients.

use crate::adapter::{Adapter, LoraConfig, LoraError, TensorPairs};
use crate::params::{Clearing, Field, ParamKey, ParamSet};
use crate::pass::{self, Batch, TrainHooks};
use std::collections::BTreeMap;
use tern_backend::{AdamW, Backend, Gemm};
use tern_model::block::{bitlinear, BlockHooks, Site};
use tern_model::model::ActQuant;
use tern_model::{Model, Param, Proj};

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

/// Which half of a LoRA pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Half {
    /// `A [r, in]`
    A,
    /// `B [out, r]`
    B,
}

/// One adapter tensor: half `half` of the pair on projection `proj` of
/// layer `layer`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct LoraKey {
    layer: usize,
    proj: Proj,
    half: Half,
}

impl ParamKey for LoraKey {
    fn decays(&self) -> bool {
        true
    }
}

/// Trains a LoRA adapter on a frozen model.
pub struct Trainer<'m, B: Backend> {
    model: &'m Model<B>,
    cfg: LoraConfig,
    act_quant: ActQuant,
    /// The adapter tensors with their gradients and moments. Gradients are
    /// cleared lazily: every backward writes every adapter gradient, so the
    /// first one after a step overwrites instead of accumulating (a
    /// dispatch per tensor per step saved).
    params: ParamSet<B, LoraKey>,
    /// Seed of the LoRA dropout masks.
    seed: u64,
    /// `forward_backward` calls with dropout so far: each gets fresh masks.
    calls: u64,
    /// Dropout active in the current call (training passes only).
    dropout_on: bool,
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
        let mut params = ParamSet::new(Clearing::Lazy);
        for (&(layer, proj), (a, b)) in &adapter.tensors {
            for (half, v) in [(Half::A, a), (Half::B, b)] {
                let key = LoraKey { layer, proj, half };
                params.push(be, key, v.len(), Some(be.upload(v)?))?;
            }
        }
        Ok(Trainer {
            model,
            cfg: adapter.cfg.clone(),
            act_quant,
            params,
            seed: 0,
            calls: 0,
            dropout_on: false,
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

    /// The model the adapter trains on.
    pub fn model(&self) -> &'m Model<B> {
        self.model
    }

    /// The dropout seed of projection `p` in layer `l` for the current pass.
    fn mask_seed(&self, l: usize, p: Proj) -> u64 {
        let mut h = self.seed ^ 0x243F_6A88_85A3_08D3;
        for v in [self.calls, l as u64, p.index() as u64] {
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
        self.params.step
    }

    fn be(&self) -> &'m B {
        &self.model.backend
    }

    /// The adapter pair `(A, B)` on projection `p` of layer `l`, if any.
    fn pair(&self, l: usize, p: Proj) -> Option<(&B::Buf, &B::Buf)> {
        let a = self.params.value(LoraKey {
            layer: l,
            proj: p,
            half: Half::A,
        })?;
        let b = self.params.value(LoraKey {
            layer: l,
            proj: p,
            half: Half::B,
        })?;
        Some((a, b))
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
        let b = Batch {
            tokens,
            targets,
            batch,
            seq,
        };
        b.check(&self.model.cfg)?;
        // Dropout only in training passes; every training pass draws new masks.
        self.dropout_on = grad_scale.is_some() && self.cfg.dropout > 0.0;
        let model = self.model;
        let result = pass::run(model, self, b, grad_scale, false).map(|(st, _)| st);
        if self.dropout_on {
            self.calls += 1;
        }
        if grad_scale.is_some() && result.is_ok() {
            // every adapter tensor received its gradient in this backward
            self.params.mark_written();
        }
        self.dropout_on = false;
        result
    }

    /// Global L2 norm of the accumulated adapter gradients.
    pub fn grad_norm(&self) -> Result<f32, LoraError> {
        Ok(self.params.grad_norm(self.be())?)
    }

    /// Scale gradients so their global norm is at most `max_norm`
    /// (`clip_grad_norm_`: factor `max_norm / (norm + 1e-6)`, capped at 1).
    /// Returns the norm before clipping.
    pub fn clip_grad_norm(&mut self, max_norm: f32) -> Result<f32, LoraError> {
        Ok(self.params.clip_grad_norm(self.be(), max_norm)?)
    }

    /// One AdamW update of every adapter tensor (gradients are then cleared
    /// lazily).
    pub fn optimizer_step(&mut self, lr: f32, beta1: f32, beta2: f32, eps: f32, weight_decay: f32) {
        let hp = AdamW {
            lr,
            beta1,
            beta2,
            eps,
            weight_decay,
            step: 0,
        };
        let be = self.be();
        self.params.adamw(be, hp, |key, value, g, m, v, hp| {
            let value = value.unwrap_or_else(|| unreachable!("{key:?} is held by the set"));
            be.adamw(value, g, m, v, hp);
        });
    }

    /// Copy buffer `field` of every adapter tensor to the host, in the
    /// adapter's `(A, B)` layout.
    fn download_pairs(&self, field: Field) -> Result<TensorPairs, LoraError> {
        let mut out: TensorPairs = BTreeMap::new();
        for (k, v) in self.params.download(self.be(), field, |_| None)? {
            let pair = out.entry((k.layer, k.proj)).or_default();
            match k.half {
                Half::A => pair.0 = v,
                Half::B => pair.1 = v,
            }
        }
        Ok(out)
    }

    /// The current adapter, copied to the host.
    pub fn adapter(&self) -> Result<Adapter, LoraError> {
        Ok(Adapter {
            cfg: self.cfg.clone(),
            tensors: self.download_pairs(Field::Value)?,
        })
    }

    /// Replace the adapter's values with `ad`'s (same projections and
    /// shapes: a checkpoint of this run).
    pub fn load_adapter(&mut self, ad: &Adapter) -> Result<(), LoraError> {
        ad.check(&self.model.cfg)?;
        let same = ad.cfg.rank == self.cfg.rank
            && ad.tensors.len() * 2 == self.params.keys().len()
            && ad.tensors.keys().all(|&(layer, proj)| {
                self.params.contains(LoraKey {
                    layer,
                    proj,
                    half: Half::A,
                })
            });
        if !same {
            return Err(LoraError::Config(format!(
                "the adapter to load (rank {}, {} pairs) does not match the one training \
                 (rank {}, {} pairs)",
                ad.cfg.rank,
                ad.tensors.len(),
                self.cfg.rank,
                self.params.keys().len() / 2
            )));
        }
        let be = self.be();
        for (&(layer, proj), (a, b)) in &ad.tensors {
            for (half, v) in [(Half::A, a), (Half::B, b)] {
                let key = LoraKey { layer, proj, half };
                let dst = self
                    .params
                    .buf_mut(key, Field::Value)
                    .expect("checked above");
                be.write(dst, 0, v);
            }
        }
        Ok(())
    }

    /// AdamW moments `(m, v)` and the step count, copied to the host (for
    /// checkpoints). Each map has the adapter's layout.
    pub fn optimizer_state(&self) -> Result<OptimizerState, LoraError> {
        Ok(OptimizerState {
            step: self.params.step,
            m: self.download_pairs(Field::M)?,
            v: self.download_pairs(Field::V)?,
        })
    }

    /// Restore what [`Self::optimizer_state`] saved (same adapter layout).
    pub fn load_optimizer_state(&mut self, st: &OptimizerState) -> Result<(), LoraError> {
        let be = self.be();
        for key in self.params.keys().to_vec() {
            let what = format!("layer {} {}", key.layer, key.proj.hf_name());
            let pair = (
                st.m.get(&(key.layer, key.proj)),
                st.v.get(&(key.layer, key.proj)),
            );
            let (Some(m), Some(v)) = pair else {
                return Err(LoraError::Config(format!(
                    "optimizer state has no moments for {what}"
                )));
            };
            let half = |p: &(Vec<f32>, Vec<f32>)| match key.half {
                Half::A => p.0.clone(),
                Half::B => p.1.clone(),
            };
            for (field, src) in [(Field::M, half(m)), (Field::V, half(v))] {
                let dst = self.params.buf_mut(key, field).expect("a moment per key");
                if be.len(dst) != src.len() {
                    return Err(LoraError::Shape {
                        what: format!("optimizer moment of {what}"),
                        expected: vec![be.len(dst)],
                        got: vec![src.len()],
                    });
                }
                be.write(dst, 0, &src);
            }
        }
        self.params.step = st.step;
        Ok(())
    }

    /// Gradients of every adapter tensor, copied to the host (for tests).
    pub fn gradients(&self) -> Result<Adapter, LoraError> {
        Ok(Adapter {
            cfg: self.cfg.clone(),
            tensors: self.download_pairs(Field::Grad)?,
        })
    }
}

impl<B: Backend> BlockHooks<B> for Trainer<'_, B> {
    type Error = LoraError;

    /// `y = BitLinear(x) + s · B (A x)` for `rows` rows.
    fn project(
        &mut self,
        be: &B,
        at: Site<'_, B>,
        x: &B::Buf,
        y: &mut B::Buf,
    ) -> Result<(), LoraError> {
        let rows = at.rows;
        bitlinear(be, self.act_quant, at.weight, x, y, rows);
        let Some((a, b)) = self.pair(at.layer, at.proj) else {
            return Ok(());
        };
        let (out, inp) = at.proj.shape(&self.model.cfg);
        let r = self.cfg.rank;
        let mut scratch = None;
        let x = self.lora_input(at.layer, at.proj, x, &mut scratch)?;
        let mut t = be.alloc(rows * r)?;
        be.matmul(x, a, &mut t, Gemm::new(rows, inp, r).trans_b());
        let up = Gemm::new(rows, r, out).trans_b().alpha(self.cfg.scaling());
        be.matmul(&t, b, y, up.accumulate());
        Ok(())
    }
}

impl<B: Backend> TrainHooks<B> for Trainer<'_, B> {
    fn act_quant(&self) -> ActQuant {
        self.act_quant
    }

    /// The base model is frozen.
    fn trains(&self, _key: Param) -> bool {
        false
    }

    fn grad(&mut self, _key: Param) -> Option<&mut B::Buf> {
        None
    }

    /// The adapter branch: `dx += dropout'(s · dy B A)`, `dB += s · dyᵀ t`,
    /// `dA += (s · dy B)ᵀ x_d` (or `=` right after an optimizer step).
    fn extra_backward(
        &mut self,
        be: &B,
        at: Site<'_, B>,
        x: &B::Buf,
        dy: &B::Buf,
        dx: &mut B::Buf,
    ) -> Result<(), LoraError> {
        let (l, p, rows) = (at.layer, at.proj, at.rows);
        let Some((a, b)) = self.pair(l, p) else {
            return Ok(());
        };
        let (out, inp) = p.shape(&self.model.cfg);
        let r = self.cfg.rank;
        let s = self.cfg.scaling();
        let dropped = self.dropout_on && self.cfg.dropout > 0.0;
        let mask_seed = self.mask_seed(l, p);
        let mut scratch = None;
        let xd = self.lora_input(l, p, x, &mut scratch)?;
        let mut t = be.alloc(rows * r)?;
        be.matmul(xd, a, &mut t, Gemm::new(rows, inp, r).trans_b());
        // dt = s · dy B
        let mut dt = be.alloc(rows * r)?;
        be.matmul(dy, b, &mut dt, Gemm::new(rows, out, r).alpha(s));
        // dx += dropout'(dt A): the same mask on the way back.
        if dropped {
            let mut dxd = be.alloc(rows * inp)?;
            be.matmul(&dt, a, &mut dxd, Gemm::new(rows, r, inp));
            let mut masked = be.alloc(rows * inp)?;
            be.dropout(&dxd, &mut masked, self.cfg.dropout, mask_seed);
            be.axpy(1.0, &masked, dx);
        } else {
            be.matmul(&dt, a, dx, Gemm::new(rows, r, inp).accumulate());
        }
        // dB += s · dyᵀ t ; dA += dtᵀ x_d (or = after an optimizer step)
        let beta = self.params.grad_beta();
        let key = |half| LoraKey {
            layer: l,
            proj: p,
            half,
        };
        let gb = self
            .params
            .grad_mut(key(Half::B))
            .expect("B has a gradient");
        be.matmul(
            dy,
            &t,
            gb,
            Gemm::new(out, rows, r).trans_a().alpha(s).beta(beta),
        );
        let ga = self
            .params
            .grad_mut(key(Half::A))
            .expect("A has a gradient");
        be.matmul(&dt, xd, ga, Gemm::new(r, rows, inp).trans_a().beta(beta));
        Ok(())
    }
}
