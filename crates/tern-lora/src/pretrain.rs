//! Training a BitNet b1.58 model from scratch: quantization-aware training
//! (QAT) with latent f32 weights.
//!
//! Every projection keeps a latent f32 weight `W`. The forward uses its
//! absmean ternarization `W_q = codes * scale` (re-packed on the device by
//! [`Backend::requantize_ternary`] after every optimizer step) with int8
//! activations, exactly the inference forward of `tern_model::Model`. The
//! backward is the straight-through estimator on both quantizers, as
//! transformers' online `AutoBitLinear` defines it (no clipping mask, no
//! gradient through the scales):
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
//! keeps each block's input, the backward recomputes one block at a time.

use crate::block::{self, BlockHooks, Norm};
use crate::schedule::Schedule;
use crate::train::StepStats;
use std::path::PathBuf;
use tern_backend::{AdamW, Backend, BackendError, Gemm, TernarySource};
use tern_model::model::{ActQuant, Layer};
use tern_model::weights::{ternarize, EMBED, LM_HEAD, NORM};
use tern_model::{BitNetConfig, Model, ModelError, Proj, WeightError, WeightSource};

/// What can go wrong setting up or running pretraining.
#[derive(Debug, thiserror::Error)]
pub enum PretrainError {
    #[error("pretrain: {0}")]
    Config(String),
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

/// The four norms of a block, in [`LatentLayer::norms`] order, by their
/// canonical tensor names.
pub const NORM_NAMES: [&str; 4] = [
    "input_layernorm",
    "attn_sub_norm",
    "post_attention_layernorm",
    "ffn_sub_norm",
];

/// One block's latent parameters on the host.
#[derive(Clone, Debug, PartialEq)]
pub struct LatentLayer {
    /// `input_layernorm [H]`, `attn_sub_norm [q_dim]`,
    /// `post_attention_layernorm [H]`, `ffn_sub_norm [I]`.
    pub norms: [Vec<f32>; 4],
    /// The seven projections in [`Proj::ALL`] order, `[out, in]` each.
    pub proj: [Vec<f32>; 7],
}

/// Full-precision (latent) weights of a whole model on the host: what the
/// pretrainer starts from and what it hands back. As a [`WeightSource`] it
/// ternarizes each projection on request (absmean, as the forward does), so
/// `tern_model::export::export` writes exactly the model the pretrainer
/// computes with, and `Model::load` builds it.
///
/// The same layout also carries gradients ([`Pretrainer::gradients`]).
#[derive(Clone, Debug, PartialEq)]
pub struct LatentWeights {
    pub cfg: BitNetConfig,
    /// `[vocab, H]`.
    pub embed: Vec<f32>,
    /// `[H]`.
    pub norm: Vec<f32>,
    /// `[vocab, H]`, `None` when tied to the embedding.
    pub lm_head: Option<Vec<f32>>,
    pub layers: Vec<LatentLayer>,
}

/// SplitMix64 step.
fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// `n` samples of `N(0, std²)` (Box-Muller over SplitMix64) for tensor
/// number `tensor` under `seed`: each tensor has its own stream.
fn normal(seed: u64, tensor: u64, n: usize, std: f32) -> Vec<f32> {
    let mut st = seed ^ tensor.wrapping_mul(0xD6E8_FEB8_6659_FD93);
    splitmix(&mut st);
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        // u1 in (0, 1], u2 in [0, 1).
        let u1 = ((splitmix(&mut st) >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
        let u2 = (splitmix(&mut st) >> 11) as f64 / (1u64 << 53) as f64;
        let r = (-2.0 * u1.ln()).sqrt();
        let t = 2.0 * std::f64::consts::PI * u2;
        out.push((r * t.cos()) as f32 * std);
        if out.len() < n {
            out.push((r * t.sin()) as f32 * std);
        }
    }
    out
}

impl LatentWeights {
    /// A fresh model of `cfg`: projections, embedding and head drawn from
    /// `N(0, std²)` (GPT-2/Llama's 0.02 is the usual `std`), norms all ones.
    /// The same `(cfg, seed, std)` always gives the same weights.
    pub fn init(cfg: &BitNetConfig, seed: u64, std: f32) -> Self {
        let (h, f, vocab) = (cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size);
        let mut tensor = 0u64;
        let mut draw = |n: usize| {
            tensor += 1;
            normal(seed, tensor, n, std)
        };
        let embed = draw(vocab * h);
        let lm_head = (!cfg.tie_word_embeddings).then(|| draw(vocab * h));
        let layers = (0..cfg.num_hidden_layers)
            .map(|_| LatentLayer {
                norms: [
                    vec![1.0; h],
                    vec![1.0; cfg.q_dim()],
                    vec![1.0; h],
                    vec![1.0; f],
                ],
                proj: Proj::ALL.map(|p| {
                    let (o, i) = p.shape(cfg);
                    draw(o * i)
                }),
            })
            .collect();
        LatentWeights {
            cfg: cfg.clone(),
            embed,
            norm: vec![1.0; h],
            lm_head,
            layers,
        }
    }

    /// Every tensor with its canonical name and shape (outermost first), in
    /// a fixed order.
    pub fn tensors(&self) -> Vec<(String, Vec<usize>, &[f32])> {
        let cfg = &self.cfg;
        let (h, vocab) = (cfg.hidden_size, cfg.vocab_size);
        let mut out: Vec<(String, Vec<usize>, &[f32])> =
            vec![(EMBED.into(), vec![vocab, h], &self.embed[..])];
        out.push((NORM.into(), vec![h], &self.norm[..]));
        if let Some(head) = &self.lm_head {
            out.push((LM_HEAD.into(), vec![vocab, h], &head[..]));
        }
        for (l, layer) in self.layers.iter().enumerate() {
            for (name, v) in NORM_NAMES.iter().zip(&layer.norms) {
                out.push((format!("layers.{l}.{name}"), vec![v.len()], &v[..]));
            }
            for (p, v) in Proj::ALL.iter().zip(&layer.proj) {
                let (o, i) = p.shape(cfg);
                out.push((format!("layers.{l}.{}", p.hf_name()), vec![o, i], &v[..]));
            }
        }
        out
    }

    /// Checks every tensor's length against the config.
    pub fn check(&self) -> Result<(), PretrainError> {
        let cfg = &self.cfg;
        if self.layers.len() != cfg.num_hidden_layers {
            return Err(PretrainError::Config(format!(
                "latent weights hold {} layers, the config {}",
                self.layers.len(),
                cfg.num_hidden_layers
            )));
        }
        if self.lm_head.is_some() == cfg.tie_word_embeddings {
            return Err(PretrainError::Config(format!(
                "latent weights {} an lm_head but tie_word_embeddings is {}",
                if self.lm_head.is_some() {
                    "have"
                } else {
                    "lack"
                },
                cfg.tie_word_embeddings
            )));
        }
        let (h, f) = (cfg.hidden_size, cfg.intermediate_size);
        for (name, shape, v) in self.tensors() {
            let want: usize = shape.iter().product();
            let want_norm = match name.rsplit('.').next() {
                Some("attn_sub_norm") => Some(cfg.q_dim()),
                Some("ffn_sub_norm") => Some(f),
                Some("input_layernorm" | "post_attention_layernorm") => Some(h),
                _ => None,
            };
            if v.len() != want || want_norm.is_some_and(|n| n != want) {
                return Err(PretrainError::Config(format!(
                    "latent tensor `{name}` has {} values, the config needs {:?}",
                    v.len(),
                    want_norm.map_or(shape.clone(), |n| vec![n])
                )));
            }
        }
        Ok(())
    }

    fn find(&self, name: &str) -> Option<&[f32]> {
        match name {
            EMBED => Some(&self.embed),
            NORM => Some(&self.norm),
            LM_HEAD => self.lm_head.as_deref(),
            _ => {
                let rest = name.strip_prefix("layers.")?;
                let (l, suffix) = rest.split_once('.')?;
                let layer = self.layers.get(l.parse::<usize>().ok()?)?;
                let k = NORM_NAMES.iter().position(|&n| n == suffix)?;
                Some(&layer.norms[k])
            }
        }
    }
}

fn source_path() -> PathBuf {
    PathBuf::from("<latent weights>")
}

impl WeightSource for LatentWeights {
    fn config(&self) -> &BitNetConfig {
        &self.cfg
    }

    fn f32_tensor(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>, WeightError> {
        let v = self.find(name).ok_or_else(|| WeightError::Missing {
            file: source_path(),
            tensor: name.to_owned(),
            hint: String::new(),
        })?;
        if v.len() != shape.iter().product::<usize>() {
            return Err(WeightError::Shape {
                file: source_path(),
                tensor: name.to_owned(),
                got: vec![v.len()],
                expected: shape.to_vec(),
            });
        }
        Ok(v.to_vec())
    }

    fn ternary(&self, layer: usize, p: Proj) -> Result<Box<dyn TernarySource + '_>, WeightError> {
        let tensor = format!("layers.{layer}.{}", p.hf_name());
        let w = self
            .layers
            .get(layer)
            .map(|l| &l.proj[proj_index(p)])
            .ok_or_else(|| WeightError::Missing {
                file: source_path(),
                tensor: tensor.clone(),
                hint: String::new(),
            })?;
        let (rows, cols) = p.shape(&self.cfg);
        if w.len() != rows * cols {
            return Err(WeightError::Shape {
                file: source_path(),
                tensor,
                got: vec![w.len()],
                expected: vec![rows, cols],
            });
        }
        Ok(Box::new(ternarize(rows, cols, w)))
    }
}

fn proj_index(p: Proj) -> usize {
    Proj::ALL.iter().position(|&q| q == p).expect("in ALL")
}

// ---------------------------------------------------------------------------
// schedules

/// Learning rate and weight decay for one optimizer step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepHparams {
    pub lr: f32,
    pub weight_decay: f32,
}

/// The BitNet b1.58 two-stage schedule.
///
/// Source: "BitNet b1.58 2B4T Technical Report" (Ma et al., Microsoft,
/// arXiv:2504.12285, section 2.2 "Pre-training") and Microsoft's "The Era of
/// 1-bit LLMs: Training Tips, Code and FAQ" (2024): ternary models tolerate a
/// much higher learning rate early on; the learning rate decays and then drops
/// sharply half-way through training, and the second stage runs with weight
/// decay switched off. tern's parametrization: linear warmup to `peak_lr`,
/// then linear decay that would reach 0 at `total`; at step `drop_at` the
/// rate is multiplied by `drop_ratio` and keeps decaying linearly to 0 at
/// `total`. Weight decay is `weight_decay` before `drop_at` and 0 after. (The
/// report's stage-1 weight decay follows a cosine bump peaking at 0.1; tern
/// keeps it constant.)
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TwoStage {
    pub peak_lr: f32,
    pub warmup: u64,
    pub total: u64,
    /// First step of the second stage (by default `total / 2`).
    pub drop_at: u64,
    /// Learning-rate multiplier applied from `drop_at` on.
    pub drop_ratio: f32,
    pub weight_decay: f32,
}

impl TwoStage {
    /// The schedule with the drop at mid-training.
    pub fn new(peak_lr: f32, warmup: u64, total: u64, drop_ratio: f32, weight_decay: f32) -> Self {
        TwoStage {
            peak_lr,
            warmup,
            total,
            drop_at: total / 2,
            drop_ratio,
            weight_decay,
        }
    }

    pub fn at(&self, s: u64) -> StepHparams {
        let base = Schedule {
            kind: crate::schedule::ScheduleKind::Linear,
            base_lr: self.peak_lr,
            warmup: self.warmup,
            total: self.total,
        }
        .lr(s);
        if s < self.drop_at {
            StepHparams {
                lr: base,
                weight_decay: self.weight_decay,
            }
        } else {
            StepHparams {
                lr: base * self.drop_ratio,
                weight_decay: 0.0,
            }
        }
    }
}

/// Learning-rate (and weight-decay) schedule of a pretraining run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum PretrainSchedule {
    /// A [`Schedule`] (constant, linear or cosine with warmup) and a constant
    /// weight decay.
    Standard {
        schedule: Schedule,
        weight_decay: f32,
    },
    /// BitNet b1.58's two-stage schedule.
    TwoStage(TwoStage),
}

impl PretrainSchedule {
    /// Hyper-parameters of optimizer step `s` (0-based).
    pub fn at(&self, s: u64) -> StepHparams {
        match self {
            PretrainSchedule::Standard {
                schedule,
                weight_decay,
            } => StepHparams {
                lr: schedule.lr(s),
                weight_decay: *weight_decay,
            },
            PretrainSchedule::TwoStage(t) => t.at(s),
        }
    }
}

// ---------------------------------------------------------------------------
// the trainer

/// Which parameter a gradient/moment slot belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Slot {
    Embed,
    FinalNorm,
    Head,
    Norm(usize, usize),
    Proj(usize, usize),
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

fn ternary_of<B: Backend>(layer: &Layer<B>, p: usize) -> &B::Ternary {
    match Proj::ALL[p] {
        Proj::Q => &layer.q,
        Proj::K => &layer.k,
        Proj::V => &layer.v,
        Proj::O => &layer.o,
        Proj::Gate => &layer.gate,
        Proj::Up => &layer.up,
        Proj::Down => &layer.down,
    }
}

fn ternary_of_mut<B: Backend>(layer: &mut Layer<B>, p: usize) -> &mut B::Ternary {
    match Proj::ALL[p] {
        Proj::Q => &mut layer.q,
        Proj::K => &mut layer.k,
        Proj::V => &mut layer.v,
        Proj::O => &mut layer.o,
        Proj::Gate => &mut layer.gate,
        Proj::Up => &mut layer.up,
        Proj::Down => &mut layer.down,
    }
}

fn norm_of<B: Backend>(layer: &Layer<B>, k: usize) -> &B::Buf {
    match k {
        0 => &layer.attn_norm,
        1 => &layer.attn_sub_norm,
        2 => &layer.ffn_norm,
        _ => &layer.ffn_sub_norm,
    }
}

fn norm_of_mut<B: Backend>(layer: &mut Layer<B>, k: usize) -> &mut B::Buf {
    match k {
        0 => &mut layer.attn_norm,
        1 => &mut layer.attn_sub_norm,
        2 => &mut layer.ffn_norm,
        _ => &mut layer.ffn_sub_norm,
    }
}

/// Trains every parameter of a BitNet model with QAT (see the module docs).
pub struct Pretrainer<B: Backend> {
    /// The ternarized model the forward runs; its embedding, norms and head
    /// are the trainable f32 parameters themselves.
    model: Model<B>,
    /// Latent f32 projections, `[layer][Proj::ALL index]`.
    latent: Vec<Vec<B::Buf>>,
    slots: Vec<Slot>,
    grads: Vec<B::Buf>,
    m: Vec<B::Buf>,
    v: Vec<B::Buf>,
    act_quant: ActQuant,
    step: u32,
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
        let model = Model::load(backend, weights)?;
        let be = &model.backend;
        let mut latent = Vec::with_capacity(weights.layers.len());
        for layer in &weights.layers {
            let mut bufs = Vec::with_capacity(7);
            for w in &layer.proj {
                bufs.push(be.upload(w)?);
            }
            latent.push(bufs);
        }
        let mut slots = vec![Slot::Embed, Slot::FinalNorm];
        if weights.lm_head.is_some() {
            slots.push(Slot::Head);
        }
        for l in 0..weights.layers.len() {
            slots.extend((0..4).map(|k| Slot::Norm(l, k)));
            slots.extend((0..7).map(|p| Slot::Proj(l, p)));
        }
        let mut t = Pretrainer {
            model,
            latent,
            slots,
            grads: Vec::new(),
            m: Vec::new(),
            v: Vec::new(),
            act_quant,
            step: 0,
        };
        for i in 0..t.slots.len() {
            let n = t.model.backend.len(t.param(i));
            t.grads.push(t.model.backend.zeros(n)?);
            t.m.push(t.model.backend.zeros(n)?);
            t.v.push(t.model.backend.zeros(n)?);
        }
        Ok(t)
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
        self.step
    }

    /// The activation mode of the forward.
    pub fn act_quant(&self) -> ActQuant {
        self.act_quant
    }

    fn param(&self, i: usize) -> &B::Buf {
        let m = &self.model;
        match self.slots[i] {
            Slot::Embed => &m.embed,
            Slot::FinalNorm => &m.norm,
            Slot::Head => m.lm_head.as_ref().expect("untied head"),
            Slot::Norm(l, k) => norm_of(&m.layers[l], k),
            Slot::Proj(l, p) => &self.latent[l][p],
        }
    }

    fn slot_index(&self, s: Slot) -> usize {
        self.slots
            .iter()
            .position(|&x| x == s)
            .expect("slot exists")
    }

    /// `y = BitLinear(x)` in the trainer's activation mode.
    fn proj_fwd_idx(&self, l: usize, p: usize, x: &B::Buf, y: &mut B::Buf, rows: usize) {
        let be = &self.model.backend;
        let w = ternary_of(&self.model.layers[l], p);
        match self.act_quant {
            ActQuant::PerTokenInt8 => be.ternary_matmul(w, x, y, rows),
            ActQuant::None => be.ternary_matmul_float(w, x, y, rows),
        }
    }

    /// What the weight gradient multiplies: `x_fq` with int8 activations,
    /// `None` (use `x` itself) with float activations.
    fn wgrad_input(
        &self,
        x: &B::Buf,
        rows: usize,
        cols: usize,
    ) -> Result<Option<B::Buf>, PretrainError> {
        match self.act_quant {
            ActQuant::None => Ok(None),
            ActQuant::PerTokenInt8 => {
                let be = &self.model.backend;
                let mut xq = be.zeros(rows * cols)?;
                be.fake_quant_act(x, &mut xq, rows, cols);
                Ok(Some(xq))
            }
        }
    }

    /// STE backward of one projection: `dx (+)= dy · W_q`,
    /// `dW += dyᵀ · xg` (`xg` is `x_fq` or `x`).
    #[allow(clippy::too_many_arguments)]
    fn proj_bwd_idx(
        &mut self,
        l: usize,
        p: usize,
        xg: &B::Buf,
        dy: &B::Buf,
        dx: &mut B::Buf,
        rows: usize,
        accumulate: bool,
    ) -> Result<(), PretrainError> {
        let (out, inp) = Proj::ALL[p].shape(&self.model.cfg);
        let gi = self.slot_index(Slot::Proj(l, p));
        let be = &self.model.backend;
        let w = ternary_of(&self.model.layers[l], p);
        if accumulate {
            let mut tmp = be.zeros(rows * inp)?;
            be.ternary_matmul_backward(w, dy, &mut tmp, rows);
            be.axpy(1.0, &tmp, dx);
        } else {
            be.ternary_matmul_backward(w, dy, dx, rows);
        }
        be.matmul(
            dy,
            xg,
            &mut self.grads[gi],
            gemm(out, rows, inp, true, false, 1.0, 1.0),
        );
        Ok(())
    }

    fn check_batch(
        &self,
        tokens: &[u32],
        targets: &[u32],
        batch: usize,
        seq: usize,
    ) -> Result<(), PretrainError> {
        let cfg = &self.model.cfg;
        let vocab = cfg.vocab_size as u32;
        if batch == 0 || seq == 0 || tokens.len() != batch * seq || targets.len() != tokens.len() {
            return Err(PretrainError::Config(format!(
                "batch of {} tokens / {} targets does not match {batch} x {seq}",
                tokens.len(),
                targets.len()
            )));
        }
        if seq > cfg.max_position_embeddings {
            return Err(PretrainError::Config(format!(
                "sequences of {seq} tokens exceed max_position_embeddings ({})",
                cfg.max_position_embeddings
            )));
        }
        if let Some(t) = tokens
            .iter()
            .chain(targets.iter().filter(|&&t| t != u32::MAX))
            .find(|&&t| t >= vocab)
        {
            return Err(PretrainError::Config(format!(
                "token id {t} is outside the vocabulary ({vocab})"
            )));
        }
        Ok(())
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
        self.check_batch(tokens, targets, batch, seq)?;
        Ok(self.run(tokens, targets, batch, seq, grad_scale, false)?.0)
    }

    /// Logits `[batch * seq, vocab]` of the training forward (no backward).
    pub fn logits(
        &mut self,
        tokens: &[u32],
        batch: usize,
        seq: usize,
    ) -> Result<Vec<f32>, PretrainError> {
        let targets = vec![u32::MAX; tokens.len()];
        self.check_batch(tokens, &targets, batch, seq)?;
        let (_, logits) = self.run(tokens, &targets, batch, seq, None, true)?;
        Ok(logits.expect("requested"))
    }

    fn run(
        &mut self,
        tokens: &[u32],
        targets: &[u32],
        batch: usize,
        seq: usize,
        grad_scale: Option<f32>,
        want_logits: bool,
    ) -> Result<(StepStats, Option<Vec<f32>>), PretrainError> {
        let cfg = self.model.cfg.clone();
        let n_layers = self.model.layers.len();
        let rows = batch * seq;
        let (h, vocab) = (cfg.hidden_size, cfg.vocab_size);
        let be = &self.model.backend;
        let ids = be.upload_ids(tokens)?;
        let tgt = be.upload_ids(targets)?;
        let positions: Vec<u32> = (0..rows).map(|r| (r % seq) as u32).collect();
        let pos = be.upload_ids(&positions)?;

        // Forward, keeping each block's input (the checkpoints).
        let mut xs: Vec<B::Buf> = Vec::with_capacity(n_layers + 1);
        let mut x0 = be.zeros(rows * h)?;
        be.embedding(&self.model.embed, &ids, &mut x0, h);
        xs.push(x0);
        for l in 0..n_layers {
            let acts = block::forward(&*self, l, &xs[l], &pos, batch, seq)?;
            xs.push(acts.out);
        }
        let be = &self.model.backend;
        let x_last = xs.last().expect("embedding output");
        let mut xn = be.zeros(rows * h)?;
        let mut rstd = be.zeros(rows)?;
        be.rmsnorm(
            x_last,
            &self.model.norm,
            &mut xn,
            &mut rstd,
            rows,
            h,
            cfg.rms_norm_eps,
        );
        let head = self.model.lm_head.as_ref().unwrap_or(&self.model.embed);
        let mut logits = be.zeros(rows * vocab)?;
        be.matmul(
            &xn,
            head,
            &mut logits,
            gemm(rows, h, vocab, false, true, 1.0, 0.0),
        );
        let host_logits = if want_logits {
            Some(be.download(&logits)?)
        } else {
            None
        };
        let mut loss = be.zeros(rows)?;
        let n_tokens = targets.iter().filter(|&&t| t != u32::MAX).count();
        let Some(scale) = grad_scale else {
            be.cross_entropy(&logits, &tgt, &mut loss, None, rows, vocab, 1.0);
            let loss_sum = be.download(&loss)?.iter().map(|&v| v as f64).sum();
            return Ok((StepStats { loss_sum, n_tokens }, host_logits));
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
        let mut dxn = be.zeros(rows * h)?;
        be.matmul(
            &dlogits,
            head,
            &mut dxn,
            gemm(rows, vocab, h, false, false, 1.0, 0.0),
        );
        // Head gradient: dlogitsᵀ · xn (into the embedding when tied).
        let head_slot = if self.model.lm_head.is_some() {
            self.slot_index(Slot::Head)
        } else {
            self.slot_index(Slot::Embed)
        };
        be.matmul(
            &dlogits,
            &xn,
            &mut self.grads[head_slot],
            gemm(vocab, rows, h, true, false, 1.0, 1.0),
        );
        drop(dlogits);
        let norm_slot = self.slot_index(Slot::FinalNorm);
        let mut dx = be.zeros(rows * h)?;
        be.rmsnorm_backward(
            x_last,
            &self.model.norm,
            &rstd,
            &dxn,
            &mut dx,
            Some(&mut self.grads[norm_slot]),
            rows,
            h,
        );
        for l in (0..n_layers).rev() {
            dx = block::backward(self, l, &xs[l], &dx, &pos, batch, seq)?;
        }
        let be = &self.model.backend;
        let embed_slot = self.slot_index(Slot::Embed);
        be.embedding_backward(&ids, &dx, &mut self.grads[embed_slot], h);
        let loss_sum = be.download(&loss)?.iter().map(|&v| v as f64).sum();
        Ok((StepStats { loss_sum, n_tokens }, host_logits))
    }

    /// Global L2 norm of the accumulated gradients (one download).
    pub fn grad_norm(&self) -> Result<f32, PretrainError> {
        let be = &self.model.backend;
        let mut sums = be.zeros(self.grads.len())?;
        for (i, g) in self.grads.iter().enumerate() {
            be.sum_squares(g, &mut sums, i);
        }
        let total: f64 = be.download(&sums)?.iter().map(|&v| v as f64).sum();
        Ok(total.sqrt() as f32)
    }

    /// Scale gradients so their global norm is at most `max_norm`
    /// (`clip_grad_norm_`: factor `max_norm / (norm + 1e-6)`, capped at 1).
    /// Returns the norm before clipping.
    pub fn clip_grad_norm(&mut self, max_norm: f32) -> Result<f32, PretrainError> {
        let norm = self.grad_norm()?;
        let coef = max_norm / (norm + 1e-6);
        if coef < 1.0 {
            for g in &mut self.grads {
                self.model.backend.scale(coef, g);
            }
        }
        Ok(norm)
    }

    /// One AdamW update of every parameter (weight decay only on the
    /// projections and an untied head), then re-ternarize every projection
    /// from its latent weights on the device and zero the gradients.
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
        let no_decay = AdamW {
            weight_decay: 0.0,
            ..hp
        };
        for i in 0..self.slots.len() {
            let slot = self.slots[i];
            let h = match slot {
                Slot::Proj(..) | Slot::Head => hp,
                _ => no_decay,
            };
            let model = &mut self.model;
            let be = &model.backend;
            let p: &mut B::Buf = match slot {
                Slot::Embed => &mut model.embed,
                Slot::FinalNorm => &mut model.norm,
                Slot::Head => model.lm_head.as_mut().expect("untied head"),
                Slot::Norm(l, k) => norm_of_mut(&mut model.layers[l], k),
                Slot::Proj(l, p) => &mut self.latent[l][p],
            };
            be.adamw(p, &self.grads[i], &mut self.m[i], &mut self.v[i], h);
            be.scale(0.0, &mut self.grads[i]);
        }
        let model = &mut self.model;
        for (l, layer) in model.layers.iter_mut().enumerate() {
            for p in 0..7 {
                model
                    .backend
                    .requantize_ternary(&self.latent[l][p], ternary_of_mut(layer, p));
            }
        }
    }

    /// Set every gradient to zero.
    pub fn zero_grad(&mut self) {
        for g in &mut self.grads {
            self.model.backend.scale(0.0, g);
        }
    }

    /// Copy one buffer per slot to the host in the [`LatentWeights`] layout.
    fn download_all(
        &self,
        pick: impl Fn(&Self, usize) -> &B::Buf,
    ) -> Result<LatentWeights, PretrainError> {
        let be = &self.model.backend;
        let cfg = self.model.cfg.clone();
        let mut out = LatentWeights {
            embed: Vec::new(),
            norm: Vec::new(),
            lm_head: None,
            layers: (0..cfg.num_hidden_layers)
                .map(|_| LatentLayer {
                    norms: Default::default(),
                    proj: Default::default(),
                })
                .collect(),
            cfg,
        };
        for (i, &slot) in self.slots.iter().enumerate() {
            let v = be.download(pick(self, i))?;
            match slot {
                Slot::Embed => out.embed = v,
                Slot::FinalNorm => out.norm = v,
                Slot::Head => out.lm_head = Some(v),
                Slot::Norm(l, k) => out.layers[l].norms[k] = v,
                Slot::Proj(l, p) => out.layers[l].proj[p] = v,
            }
        }
        Ok(out)
    }

    /// The current latent weights, copied to the host: a [`WeightSource`]
    /// for `tern_model::export::export` (projections ternarized exactly as
    /// the forward uses them).
    pub fn weights(&self) -> Result<LatentWeights, PretrainError> {
        self.download_all(|t, i| t.param(i))
    }

    /// The accumulated gradients in the [`LatentWeights`] layout (a
    /// projection's entry is the STE gradient of its latent weight).
    pub fn gradients(&self) -> Result<LatentWeights, PretrainError> {
        self.download_all(|t, i| &t.grads[i])
    }
}

// ---------------------------------------------------------------------------
// the loop

/// How to run [`pretrain`].
#[derive(Clone, Debug)]
pub struct PretrainOptions {
    /// Sequences per optimizer step.
    pub batch_size: usize,
    /// Optimizer steps to take (epochs over the data repeat as needed).
    pub steps: u64,
    pub schedule: PretrainSchedule,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    /// Clip the global gradient norm (0: off).
    pub max_grad_norm: f32,
    /// Show a progress bar on stderr with the loss and tokens per second.
    pub progress: bool,
}

/// What [`pretrain`] did.
#[derive(Clone, Debug, PartialEq)]
pub struct PretrainReport {
    pub steps: u64,
    /// Mean loss of the first step.
    pub first_loss: f64,
    /// Mean loss over the last (up to) 10 steps.
    pub final_loss: f64,
    /// Target tokens trained on.
    pub tokens: u64,
    pub seconds: f64,
}

/// Train `t` on the training examples of `data` for `opts.steps` optimizer
/// steps: one micro-batch of `batch_size` examples per step, mean token loss,
/// clipping, AdamW under the schedule, re-ternarization.
pub fn pretrain<B: Backend>(
    t: &mut Pretrainer<B>,
    data: &crate::data::Dataset,
    opts: &PretrainOptions,
) -> Result<PretrainReport, PretrainError> {
    if data.train_len() == 0 {
        return Err(PretrainError::Config(format!(
            "{}: no training examples",
            data.path().display()
        )));
    }
    if opts.batch_size == 0 || opts.steps == 0 {
        return Err(PretrainError::Config(
            "batch size and steps must be at least 1".into(),
        ));
    }
    let bar = if opts.progress {
        let b = indicatif::ProgressBar::new(opts.steps);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{elapsed_precise} [{bar:30}] step {pos}/{len} (eta {eta}) {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        b
    } else {
        indicatif::ProgressBar::hidden()
    };
    let started = std::time::Instant::now();
    let (mut epoch, mut order, mut at) = (0usize, data.epoch_order(0), 0usize);
    let mut recent: std::collections::VecDeque<f64> = Default::default();
    let (mut first, mut tokens) = (f64::NAN, 0u64);
    for s in 0..opts.steps {
        let mut idx = Vec::with_capacity(opts.batch_size);
        while idx.len() < opts.batch_size {
            if at == order.len() {
                epoch += 1;
                order = data.epoch_order(epoch);
                at = 0;
            }
            idx.push(order[at]);
            at += 1;
        }
        let b = data.batch(&idx);
        let n = b.n_targets();
        let st = t.forward_backward(
            &b.tokens,
            &b.targets,
            b.batch,
            b.seq,
            Some(1.0 / n.max(1) as f32),
        )?;
        if opts.max_grad_norm > 0.0 {
            t.clip_grad_norm(opts.max_grad_norm)?;
        }
        let hp = opts.schedule.at(s);
        t.optimizer_step(hp.lr, opts.beta1, opts.beta2, opts.eps, hp.weight_decay);
        let loss = st.mean();
        if s == 0 {
            first = loss;
        }
        recent.push_back(loss);
        if recent.len() > 10 {
            recent.pop_front();
        }
        tokens += n as u64;
        let tps = tokens as f64 / started.elapsed().as_secs_f64().max(1e-9);
        bar.set_message(format!(
            "loss {loss:.4} lr {:.2e} {tps:.0} tok/s epoch {epoch}",
            hp.lr
        ));
        bar.inc(1);
    }
    bar.finish();
    Ok(PretrainReport {
        steps: opts.steps,
        first_loss: first,
        final_loss: recent.iter().sum::<f64>() / recent.len().max(1) as f64,
        tokens,
        seconds: started.elapsed().as_secs_f64(),
    })
}

impl<B: Backend> BlockHooks<B> for Pretrainer<B> {
    type Error = PretrainError;

    fn model(&self) -> &Model<B> {
        &self.model
    }

    fn proj_fwd(
        &self,
        l: usize,
        p: Proj,
        x: &B::Buf,
        y: &mut B::Buf,
        rows: usize,
    ) -> Result<(), PretrainError> {
        self.proj_fwd_idx(l, proj_index(p), x, y, rows);
        Ok(())
    }

    /// `x_fq` for the weight gradients under int8 activations.
    fn grad_input(
        &self,
        x: &B::Buf,
        rows: usize,
        cols: usize,
    ) -> Result<Option<B::Buf>, PretrainError> {
        self.wgrad_input(x, rows, cols)
    }

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
    ) -> Result<(), PretrainError> {
        self.proj_bwd_idx(l, proj_index(p), xg.unwrap_or(x), dy, dx, rows, accumulate)
    }

    /// Norm weights train: their gradients accumulate.
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
        let k = match n {
            Norm::Attn => 0,
            Norm::AttnSub => 1,
            Norm::Ffn => 2,
            Norm::FfnSub => 3,
        };
        let gi = self.slot_index(Slot::Norm(l, k));
        let w = n.weight(&self.model.layers[l]);
        let dw = Some(&mut self.grads[gi]);
        self.model
            .backend
            .rmsnorm_backward(x, w, rstd, dy, dx, dw, rows, dim);
    }
}
