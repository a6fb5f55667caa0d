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
use tern_backend::multi::Product;
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
    /// `A x_d` of each adapter from the last forward of its layer (the
    /// recomputation right before the layer's backward), which the
    /// backward reuses instead of computing it again.
    t_cache: BTreeMap<(usize, Proj), B::Buf>,
    /// `s · dy B` of each adapter of the projections whose backward is
    /// under way ([`TrainHooks::extra_prepare`] to `extra_backward`).
    dt_cache: BTreeMap<(usize, Proj), B::Buf>,
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
            t_cache: BTreeMap::new(),
            dt_cache: BTreeMap::new(),
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
        self.t_cache.clear();
        self.dt_cache.clear();
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
        // every adapter tensor in one multi-tensor update
        self.params.adamw_all(self.be(), hp);
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

impl<B: Backend> Trainer<'_, B> {
    /// The LoRA branch of the projections `ats`, which all read `x`, added
    /// to their outputs `ys`: `y_i += s · B_i (A_i x_i)` with `x_i` the
    /// branch input ([`Self::lora_input`]). The A products of the group run
    /// as one multi-tensor op, then the B products as another; each
    /// `A_i x_i` is kept for the layer's backward.
    fn lora_forward(
        &mut self,
        be: &B,
        ats: &[Site<'_, B>],
        x: &B::Buf,
        ys: &mut [&mut B::Buf],
    ) -> Result<(), LoraError> {
        let cfg = &self.model.cfg;
        let (r, s) = (self.cfg.rank, self.cfg.scaling());
        let members: Vec<usize> = (0..ats.len())
            .filter(|&i| self.pair(ats[i].layer, ats[i].proj).is_some())
            .collect();
        if members.is_empty() {
            return Ok(());
        }
        let mut scratch: Vec<Option<B::Buf>> = members.iter().map(|_| None).collect();
        let xs = members
            .iter()
            .zip(scratch.iter_mut())
            .map(|(&i, sc)| self.lora_input(ats[i].layer, ats[i].proj, x, sc))
            .collect::<Result<Vec<_>, _>>()?;
        let mut ts = members
            .iter()
            .map(|&i| be.alloc(ats[i].rows * r))
            .collect::<Result<Vec<_>, _>>()?;
        let pairs: Vec<(&B::Buf, &B::Buf)> = members
            .iter()
            .map(|&i| self.pair(ats[i].layer, ats[i].proj).expect("a member"))
            .collect();
        // t_i = x_i A_iᵀ
        let mut ps: Vec<Product<'_, B>> = members
            .iter()
            .zip(&xs)
            .zip(&pairs)
            .zip(ts.iter_mut())
            .map(|(((&i, &xi), &(a, _)), t)| {
                let inp = ats[i].proj.shape(cfg).1;
                let g = Gemm::new(ats[i].rows, inp, r).trans_b();
                Product {
                    a: xi,
                    b: a,
                    c: t,
                    g,
                }
            })
            .collect();
        be.matmul_many(&mut ps);
        drop(ps);
        // y_i += s t_i B_iᵀ
        let outs = ys
            .iter_mut()
            .enumerate()
            .filter(|(i, _)| members.contains(i))
            .map(|(_, y)| &mut **y);
        let mut ps: Vec<Product<'_, B>> = members
            .iter()
            .zip(&pairs)
            .zip(&ts)
            .zip(outs)
            .map(|(((&i, &(_, bm)), t), y)| {
                let out = ats[i].proj.shape(cfg).0;
                let g = Gemm::new(ats[i].rows, r, out).trans_b().alpha(s);
                Product {
                    a: t,
                    b: bm,
                    c: y,
                    g: g.accumulate(),
                }
            })
            .collect();
        be.matmul_many(&mut ps);
        drop(ps);
        for (&i, t) in members.iter().zip(ts) {
            self.t_cache.insert((ats[i].layer, ats[i].proj), t);
        }
        Ok(())
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
        bitlinear(be, self.act_quant, at.weight, x, y, at.rows);
        self.lora_forward(be, &[at], x, &mut [y])
    }

    /// [`Self::project`] on each, the adapter products of the group
    /// batched.
    fn project_many(
        &mut self,
        be: &B,
        ats: &[Site<'_, B>],
        x: &B::Buf,
        ys: &mut [&mut B::Buf],
    ) -> Result<(), LoraError> {
        for (at, y) in ats.iter().zip(ys.iter_mut()) {
            bitlinear(be, self.act_quant, at.weight, x, y, at.rows);
        }
        self.lora_forward(be, ats, x, ys)
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

    /// The adapters' gradient products for the group: `dt_i = s · dy_i
    /// B_i` and `dB_i += s · dy_iᵀ t_i` as one multi-tensor op, then
    /// `dA_i += dt_iᵀ x_d` as another (`=` right after an optimizer step);
    /// `dt_i` is kept for [`TrainHooks::extra_backward`].
    fn extra_prepare(
        &mut self,
        be: &B,
        l: usize,
        projs: &[(Proj, &B::Buf)],
        x: &B::Buf,
        rows: usize,
    ) -> Result<(), LoraError> {
        let cfg = &self.model.cfg;
        let (r, s) = (self.cfg.rank, self.cfg.scaling());
        let members: Vec<(Proj, &B::Buf)> = projs
            .iter()
            .filter(|&&(p, _)| self.pair(l, p).is_some())
            .copied()
            .collect();
        if members.is_empty() {
            return Ok(());
        }
        let mut scratch: Vec<Option<B::Buf>> = members.iter().map(|_| None).collect();
        let xds = members
            .iter()
            .zip(scratch.iter_mut())
            .map(|(&(p, _), sc)| self.lora_input(l, p, x, sc))
            .collect::<Result<Vec<_>, _>>()?;
        // t_i from the forward just run (the recomputation), else anew
        let mut ts = Vec::with_capacity(members.len());
        for (&(p, _), &xd) in members.iter().zip(&xds) {
            let t = match self.t_cache.remove(&(l, p)) {
                Some(t) => t,
                None => {
                    let (a, _) = self.pair(l, p).expect("a member");
                    let mut t = be.alloc(rows * r)?;
                    let inp = p.shape(cfg).1;
                    be.matmul(xd, a, &mut t, Gemm::new(rows, inp, r).trans_b());
                    t
                }
            };
            ts.push(t);
        }
        let mut dts = members
            .iter()
            .map(|_| be.alloc(rows * r))
            .collect::<Result<Vec<_>, _>>()?;
        let beta = self.params.grad_beta();
        let key = |p, half| LoraKey {
            layer: l,
            proj: p,
            half,
        };
        let keys_b: Vec<LoraKey> = members.iter().map(|&(p, _)| key(p, Half::B)).collect();
        let keys_a: Vec<LoraKey> = members.iter().map(|&(p, _)| key(p, Half::A)).collect();
        {
            let (bs, gbs) = self
                .params
                .values_and_grads(&keys_b, &keys_b)
                .expect("every B has a value and a gradient");
            let mut ps: Vec<Product<'_, B>> = Vec::with_capacity(2 * members.len());
            let parts = members.iter().zip(bs).zip(gbs).zip(ts.iter().zip(&mut dts));
            for (((&(p, dy), bm), gb), (t, dt)) in parts {
                let out = p.shape(cfg).0;
                let g = Gemm::new(rows, out, r).alpha(s);
                ps.push(Product {
                    a: dy,
                    b: bm,
                    c: dt,
                    g,
                });
                let g = Gemm::new(out, rows, r).trans_a().alpha(s).beta(beta);
                ps.push(Product {
                    a: dy,
                    b: t,
                    c: gb,
                    g,
                });
            }
            be.matmul_many(&mut ps);
        }
        {
            let (_, gas) = self
                .params
                .values_and_grads(&[], &keys_a)
                .expect("every A has a gradient");
            let mut ps: Vec<Product<'_, B>> = members
                .iter()
                .zip(gas)
                .zip(dts.iter().zip(&xds))
                .map(|((&(p, _), ga), (dt, &xd))| {
                    let inp = p.shape(cfg).1;
                    let g = Gemm::new(r, rows, inp).trans_a().beta(beta);
                    Product {
                        a: dt,
                        b: xd,
                        c: ga,
                        g,
                    }
                })
                .collect();
            be.matmul_many(&mut ps);
        }
        for (&(p, _), dt) in members.iter().zip(dts) {
            self.dt_cache.insert((l, p), dt);
        }
        Ok(())
    }

    /// The adapter branch's input gradient, `dx += dropout'(dt A)` with
    /// `dt = s · dy B` (its gradient products ran in
    /// [`TrainHooks::extra_prepare`]).
    fn extra_backward(
        &mut self,
        be: &B,
        at: Site<'_, B>,
        x: &B::Buf,
        dy: &B::Buf,
        dx: &mut B::Buf,
    ) -> Result<(), LoraError> {
        let (l, p, rows) = (at.layer, at.proj, at.rows);
        if self.pair(l, p).is_none() {
            return Ok(());
        }
        if !self.dt_cache.contains_key(&(l, p)) {
            self.extra_prepare(be, l, &[(p, dy)], x, rows)?;
        }
        let dt = self.dt_cache.remove(&(l, p)).expect("prepared above");
        let (a, _) = self.pair(l, p).expect("checked above");
        let (r, inp) = (self.cfg.rank, p.shape(&self.model.cfg).1);
        // dx += dropout'(dt A): the same mask on the way back.
        if self.dropout_on && self.cfg.dropout > 0.0 {
            let mut dxd = be.alloc(rows * inp)?;
            be.matmul(&dt, a, &mut dxd, Gemm::new(rows, r, inp));
            let mut masked = be.alloc(rows * inp)?;
            be.dropout(&dxd, &mut masked, self.cfg.dropout, self.mask_seed(l, p));
            be.axpy(1.0, &masked, dx);
        } else {
            be.matmul(&dt, a, dx, Gemm::new(rows, r, inp).accumulate());
        }
        Ok(())
    }
}
