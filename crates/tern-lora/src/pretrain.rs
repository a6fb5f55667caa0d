//! Training a BitNet b1.58 model from scratch: quantization-aware training
//! (QAT) with latent f32 weights.
//!
//! Every projection keeps a latent f32 weight `W`. The forward uses its
//! absmean ternarization `W_q = codes * scale` (re-packed on the device by
//! [`Backend::requantize_ternary`] after every optimizer step) with int8
//! activations, exactly the inference forward of `tern_model::Model` (the
//! same [`tern_model::block`]). The backward is the straight-through
//! estimator on both quantizers, as transformers' online `AutoBitLinear`
//! defines it (no clipping mask, no gradient through the scales):
//! - input gradient `dx = dy · W_q` ([`Backend::ternary_matmul_backward`]);
//! - weight gradient `dW = dyᵀ · x_fq`, where `x_fq = round(x·a)/a` is the
//!   fake-quantized activation the product actually saw
//!   ([`Backend::fake_quant_act`]); with [`ActQuant::None`] (float
//!   activations) it is `dyᵀ · x`.
//!
//! Embedding, norms and the (untied) head are ordinary f32 parameters: the
//! embedding gets the scatter-add of its rows' gradients plus, when tied, the
//! head's `dlogitsᵀ · h`; the norms get `rmsnorm_backward`'s weight gradient.
//! AdamW updates every parameter (weight decay only on the projections and an
//! untied head). Blocks are checkpointed as in [`crate::train`]: the forward
//! keeps each block's input, the backward recomputes one block at a time
//! ([`crate::pass`]).

use crate::data::Batch as DataBatch;
use crate::fit::{io_err, Train, TrainError};
use crate::params::{Clearing, Field, ParamSet};
use crate::pass::{self, Batch, BatchError, TrainHooks};
use crate::train::StepStats;
use std::path::Path;
use tern_backend::{AdamW, Backend, BackendError};
use tern_io::safetensors::{write_safetensors, Checkpoint, Dtype};
use tern_model::block::{bitlinear, BlockHooks, Site};
use tern_model::model::ActQuant;
use tern_model::{BitNetConfig, HeadPrecision, Model, ModelError, Param, Proj, WeightError};

pub use crate::latent::{LatentLayer, LatentWeights};
pub use crate::schedule::{PretrainSchedule, StepHparams, TwoStage};

/// What can go wrong setting up or running pretraining.
#[derive(Debug, thiserror::Error)]
pub enum PretrainError {
    #[error("pretrain: {0}")]
    Config(String),
    #[error("pretrain: {0}")]
    Batch(#[from] BatchError),
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Weights(Box<WeightError>),
}

impl From<WeightError> for PretrainError {
    fn from(e: WeightError) -> Self {
        PretrainError::Weights(Box::new(e))
    }
}

/// Trains every parameter of a BitNet model with QAT (see the module docs).
pub struct Pretrainer<B: Backend> {
    /// The ternarized model the forward runs; its embedding, norms and head
    /// are the trainable f32 parameters themselves.
    model: Model<B>,
    /// Every parameter's gradient and moments; the set holds the latent f32
    /// projections, the other values live in `model`.
    params: ParamSet<B, Param>,
    act_quant: ActQuant,
}

/// The pretrainer's side of a training pass: plain BitLinear projections,
/// every parameter trains.
struct Qat<'a, B: Backend> {
    params: &'a mut ParamSet<B, Param>,
    act_quant: ActQuant,
}

impl<B: Backend> BlockHooks<B> for Qat<'_, B> {
    type Error = PretrainError;

    fn project(
        &mut self,
        be: &B,
        at: Site<'_, B>,
        x: &B::Buf,
        y: &mut B::Buf,
    ) -> Result<(), PretrainError> {
        bitlinear(be, self.act_quant, at.weight, x, y, at.rows);
        Ok(())
    }
}

impl<B: Backend> TrainHooks<B> for Qat<'_, B> {
    fn act_quant(&self) -> ActQuant {
        self.act_quant
    }

    fn trains(&self, key: Param) -> bool {
        self.params.contains(key)
    }

    fn grad(&mut self, key: Param) -> Option<&mut B::Buf> {
        self.params.grad_mut(key)
    }
}

impl<B: Backend> Pretrainer<B> {
    /// Upload `weights` (latent projections, ternarized for the forward) to
    /// `backend`, with zero gradients and moments. `act_quant` is BitNet's
    /// int8 activations ([`ActQuant::PerTokenInt8`], the training forward) or
    /// float activations ([`ActQuant::None`], a smooth surrogate used to check
    /// the gradients).
    pub fn new(
        backend: B,
        weights: &LatentWeights,
        act_quant: ActQuant,
    ) -> Result<Self, PretrainError> {
        weights.check()?;
        // QAT trains the embedding and head: they stay in f32 on every backend
        let model = Model::load_with_head(backend, weights, HeadPrecision::F32)?;
        let be = &model.backend;
        let mut params = ParamSet::new(Clearing::Eager);
        for key in Param::all(&model.cfg) {
            let v = weights.get(key).expect("checked above");
            let value = match key {
                Param::Proj(..) => Some(be.upload(v)?),
                Param::Embed | Param::FinalNorm | Param::Head | Param::Norm(..) => None,
            };
            params.push(be, key, v.len(), value)?;
        }
        Ok(Pretrainer {
            model,
            params,
            act_quant,
        })
    }

    /// The model config.
    pub fn config(&self) -> &BitNetConfig {
        &self.model.cfg
    }

    /// The backend everything runs on.
    pub fn backend(&self) -> &B {
        &self.model.backend
    }

    /// The ternarized model (the forward the trainer computes).
    pub fn model(&self) -> &Model<B> {
        &self.model
    }

    /// Optimizer steps taken.
    pub fn steps(&self) -> u32 {
        self.params.step
    }

    /// The activation mode of the forward.
    pub fn act_quant(&self) -> ActQuant {
        self.act_quant
    }

    /// Forward, loss and (when `grad_scale` is given) backward of one
    /// micro-batch of `batch` sequences of `seq` tokens. `targets[i]` is the
    /// token expected after `tokens[i]`, or `u32::MAX` to ignore the
    /// position. Gradients accumulate `grad_scale · d(loss_sum)`.
    pub fn forward_backward(
        &mut self,
        tokens: &[u32],
        targets: &[u32],
        batch: usize,
        seq: usize,
        grad_scale: Option<f32>,
    ) -> Result<StepStats, PretrainError> {
        let b = Batch {
            tokens,
            targets,
            batch,
            seq,
        };
        Ok(self.run(b, grad_scale, false)?.0)
    }

    /// Logits `[batch * seq, vocab]` of the training forward (no backward).
    pub fn logits(
        &mut self,
        tokens: &[u32],
        batch: usize,
        seq: usize,
    ) -> Result<Vec<f32>, PretrainError> {
        let targets = vec![u32::MAX; tokens.len()];
        let b = Batch {
            tokens,
            targets: &targets,
            batch,
            seq,
        };
        let (_, logits) = self.run(b, None, true)?;
        Ok(logits.expect("requested"))
    }

    fn run(
        &mut self,
        b: Batch<'_>,
        grad_scale: Option<f32>,
        want_logits: bool,
    ) -> Result<(StepStats, Option<Vec<f32>>), PretrainError> {
        b.check(&self.model.cfg)?;
        let mut hooks = Qat {
            params: &mut self.params,
            act_quant: self.act_quant,
        };
        pass::run(&self.model, &mut hooks, b, grad_scale, want_logits)
    }

    /// Global L2 norm of the accumulated gradients (one download).
    pub fn grad_norm(&self) -> Result<f32, PretrainError> {
        Ok(self.params.grad_norm(&self.model.backend)?)
    }

    /// Scale gradients so their global norm is at most `max_norm`
    /// (`clip_grad_norm_`: factor `max_norm / (norm + 1e-6)`, capped at 1).
    /// Returns the norm before clipping.
    pub fn clip_grad_norm(&mut self, max_norm: f32) -> Result<f32, PretrainError> {
        Ok(self.params.clip_grad_norm(&self.model.backend, max_norm)?)
    }

    /// One AdamW update of every parameter (weight decay only on the
    /// projections and an untied head), then re-ternarize every projection
    /// from its latent weights on the device and zero the gradients.
    pub fn optimizer_step(&mut self, lr: f32, beta1: f32, beta2: f32, eps: f32, weight_decay: f32) {
        let hp = AdamW {
            lr,
            beta1,
            beta2,
            eps,
            weight_decay,
            step: 0,
        };
        let (be, mut dense) = self.model.backend_and_params_mut();
        self.params.adamw(be, hp, |key, latent, g, m, v, hp| {
            let w = latent.or_else(|| dense.get(key));
            let w = w.unwrap_or_else(|| unreachable!("{key} is held by the set or the model"));
            be.adamw(w, g, m, v, hp);
        });
        self.requantize();
    }

    /// Set every gradient to zero.
    pub fn zero_grad(&mut self) {
        self.params.zero_grads(&self.model.backend);
    }

    /// Copy buffer `field` of every parameter to the host in the
    /// [`LatentWeights`] layout.
    fn download(&self, field: Field) -> Result<LatentWeights, PretrainError> {
        let mut out = LatentWeights::empty(&self.model.cfg);
        let be = &self.model.backend;
        for (key, v) in self.params.download(be, field, |k| self.model.param(k))? {
            out.set(key, v);
        }
        Ok(out)
    }

    /// The current latent weights, copied to the host: a [`WeightSource`]
    /// for `tern_model::export::export` (projections ternarized exactly as
    /// the forward uses them).
    ///
    /// [`WeightSource`]: tern_model::WeightSource
    pub fn weights(&self) -> Result<LatentWeights, PretrainError> {
        self.download(Field::Value)
    }

    /// The accumulated gradients in the [`LatentWeights`] layout (a
    /// projection's entry is the STE gradient of its latent weight).
    pub fn gradients(&self) -> Result<LatentWeights, PretrainError> {
        self.download(Field::Grad)
    }
}

impl<B: Backend> Pretrainer<B> {
    /// Re-pack every projection from its latent weight (absmean ternary).
    fn requantize(&mut self) {
        let be = &self.model.backend;
        for (l, layer) in self.model.layers.iter_mut().enumerate() {
            for p in Proj::ALL {
                let latent = self.params.value(Param::Proj(l, p)).expect("latent weight");
                be.requantize_ternary(latent, layer.proj_mut(p));
            }
        }
    }
}

/// File names of a pretraining checkpoint: the latent weights, and the
/// moments as `m.<name>` / `v.<name>` by canonical tensor name.
const WEIGHTS_FILE: &str = "weights.safetensors";
const OPTIMIZER_FILE: &str = "optimizer.safetensors";

impl<B: Backend> Train for Pretrainer<B> {
    fn model_config(&self) -> &BitNetConfig {
        &self.model.cfg
    }

    fn micro_batch(
        &mut self,
        b: &DataBatch,
        grad_scale: Option<f32>,
    ) -> Result<StepStats, TrainError> {
        Ok(self.forward_backward(&b.tokens, &b.targets, b.batch, b.seq, grad_scale)?)
    }

    fn gradient_norm(&mut self, clip: Option<f32>) -> Result<f32, TrainError> {
        Ok(match clip {
            Some(m) => self.clip_grad_norm(m)?,
            None => self.grad_norm()?,
        })
    }

    fn update(&mut self, hp: AdamW) {
        self.optimizer_step(hp.lr, hp.beta1, hp.beta2, hp.eps, hp.weight_decay);
    }

    fn optimizer_steps(&self) -> u32 {
        self.steps()
    }

    fn save_state(&self, dir: &Path) -> Result<(), TrainError> {
        let be = &self.model.backend;
        let cfg = &self.model.cfg;
        let write = |file: &str, fields: &[(&str, Field)]| -> Result<(), TrainError> {
            let path = dir.join(file);
            let mut tensors = Vec::new();
            for &(prefix, field) in fields {
                let home = |k| self.model.param(k);
                for (key, v) in self.params.download(be, field, home)? {
                    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                    let name = format!("{prefix}{}", key.name());
                    tensors.push((name, Dtype::F32, key.shape(cfg), bytes));
                }
            }
            write_safetensors(&path, &tensors, None).map_err(|e| io_err(&path, e.kind))
        };
        write(WEIGHTS_FILE, &[("", Field::Value)])?;
        write(OPTIMIZER_FILE, &[("m.", Field::M), ("v.", Field::V)])
    }

    fn load_state(&mut self, dir: &Path, steps: u32) -> Result<(), TrainError> {
        let (wpath, opath) = (dir.join(WEIGHTS_FILE), dir.join(OPTIMIZER_FILE));
        let open = |p: &Path| Checkpoint::open(p).map_err(|e| io_err(p, e.kind));
        let (wck, ock) = (open(&wpath)?, open(&opath)?);
        let cfg = self.model.cfg.clone();
        for key in self.params.keys().to_vec() {
            let n: usize = key.shape(&cfg).iter().product();
            for (ck, path, name, field) in [
                (&wck, &wpath, key.name(), Field::Value),
                (&ock, &opath, format!("m.{key}"), Field::M),
                (&ock, &opath, format!("v.{key}"), Field::V),
            ] {
                let v = ck.to_f32(&name).map_err(|e| io_err(path, e.kind))?;
                if v.len() != n {
                    let what = format!(
                        "tensor `{name}` has {} values, the model needs {n}",
                        v.len()
                    );
                    return Err(io_err(path, what));
                }
                let (be, mut dense) = self.model.backend_and_params_mut();
                let dst = match self.params.buf_mut(key, field) {
                    Some(b) => b,
                    None => dense.get(key).expect("a dense parameter of the model"),
                };
                be.write(dst, 0, &v);
            }
        }
        self.params.step = steps;
        self.requantize();
        Ok(())
    }
}
